"""Checkpoint images from host to host: a host's image server gives the files of its store
(``<checkpoint_dir>/<job>/<checkpoint>/rank-<N>/...``) to the agents allowed to ask, and a host
that needs a rank's images (to restore it, or to keep a copy) fetches them from the hosts that
hold them, checked against the manifest's digests as they arrive.

The wire (proto/crctl/v1/transfer.proto): CurveZMQ, the hosts' own key pairs, a ZAP allow list
on the server; the fetcher keeps a few chunk requests outstanding ("PATH at OFFSET, LENGTH"),
the server answers each with the bytes. Layout: ``_protocol`` (what both ends agree on),
``_paths`` (names and paths in the store, opened without following symlinks), ``_server``
(:class:`ImageServer`), ``_store`` (files arriving: partial, hashed, checked, renamed),
``_session`` (the fetch from one source, chunk requests on credit), ``_fetch``
(:func:`fetch_rank`: the sources in turn; :func:`fetch_ranks`: ranks in parallel)."""

from agent.transfer._fetch import PARALLEL_RANKS, FetchResult, RankFetch, fetch_rank, fetch_ranks
from agent.transfer._protocol import CHUNK_BYTES, MAX_CHUNK_BYTES, PIPELINE
from agent.transfer._server import ImageServer
from agent.transfer._session import ImageSource

__all__ = [
    "CHUNK_BYTES",
    "MAX_CHUNK_BYTES",
    "PARALLEL_RANKS",
    "PIPELINE",
    "FetchResult",
    "ImageServer",
    "ImageSource",
    "RankFetch",
    "fetch_rank",
    "fetch_ranks",
]
