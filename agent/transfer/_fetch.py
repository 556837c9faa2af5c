"""Fetching ranks' checkpoint images from the hosts that hold them, into this host's store.

The manifest's lines say what to fetch (path, size, digest). Files already in the store with
their size and digest stay (a retry, or an earlier fetch that failed part way); one that
differs is an error. The sources are tried in order (``_session``): one that cannot be
reached, lacks a file, refuses us or serves bytes that do not verify is left for the next,
which starts from the first file not yet in place. When none is left the fetch fails, naming
every source and why, and saying whether every one of them holds a copy that differs from the
manifest (the rank's images are then damaged everywhere, not just out of reach); no partial
file stays behind (``_store``)."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import structlog
import zmq

from agent.transfer._paths import PathRefused, check_names, image_path
from agent.transfer._protocol import CHUNK_BYTES, PIPELINE
from agent.transfer._session import ImageSource, Session, SourceFailed
from agent.transfer._store import CheckpointFolder, WantedFile
from crctl import digests, keys
from crctl.errors import CrctlError, ImageFetchError, SourceFailure
from crctl.v1 import control_pb2

log = structlog.get_logger()

PARALLEL_RANKS = 4  # ranks fetch_ranks fetches at once


@dataclass(frozen=True)
class RankFetch:
    """One rank's part of :func:`fetch_ranks`: what :func:`fetch_rank` takes for it."""

    job: str
    checkpoint: str
    rank: int
    files: Sequence[control_pb2.FileDigest]
    sources: Sequence[ImageSource]


@dataclass(frozen=True)
class FetchResult:
    job: str
    checkpoint: str
    rank: int
    source: str | None  # the host the fetch ended with; None when every file was in place
    files: int  # fetched
    bytes: int  # fetched
    seconds: float
    present: int  # files in place already, kept
    failures: tuple[SourceFailure, ...]  # the sources given up on before ``source``

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


def fetch_rank(
    sources: Sequence[ImageSource],
    own: keys.KeyPair,
    job: str,
    checkpoint: str,
    rank: int,
    files: Sequence[control_pb2.FileDigest],
    store_root: Path,
    *,
    timeout: float = 10.0,
    chunk_bytes: int = CHUNK_BYTES,
    pipeline: int = PIPELINE,
) -> FetchResult:
    """Fetch rank ``rank``'s image files (the manifest's ``files``, paths relative to the
    checkpoint's folder: ``rank-<rank>/...``) into ``store_root/<job>/<checkpoint>/`` from the
    first of ``sources`` that serves them, authenticated as ``own``; a source is given up on
    after ``timeout`` seconds without an answer. Raises :class:`ImageFetchError` when every
    source failed or the store refuses a file."""
    started = time.perf_counter()
    bound = log.bind(job=job, checkpoint=checkpoint, rank=rank)

    def error(
        reason: str, failures: Sequence[SourceFailure] = (), *, every_copy_damaged: bool = False
    ) -> ImageFetchError:
        return ImageFetchError(
            f"rank {rank} of {checkpoint}: {reason}",
            job=job,
            checkpoint=checkpoint,
            rank=rank,
            failures=failures,
            damaged_ranks=[rank] if every_copy_damaged else [],
        )

    failures: list[SourceFailure] = []
    try:
        wanted = _wanted(job, checkpoint, rank, files)
        with CheckpointFolder(store_root, job, checkpoint) as store:
            todo = [file for file in wanted if not store.in_place(file)]
            present = len(wanted) - len(todo)
            if not todo:
                seconds = time.perf_counter() - started
                return FetchResult(job, checkpoint, rank, None, 0, 0, seconds, present, ())
            count, total = len(todo), sum(file.line.size for file in todo)
            hosts = [source.host for source in sources]
            bound.info("image_fetch_started", files=count, bytes=total, sources=hosts)
            context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
            try:
                for source in sources:
                    session = Session(
                        context,
                        source,
                        own,
                        store,
                        job,
                        checkpoint,
                        timeout=timeout,
                        chunk_bytes=chunk_bytes,
                        pipeline=pipeline,
                    )
                    try:
                        session.run(todo)
                    except SourceFailed as exc:
                        failures.append(SourceFailure(source.host, exc.reason, rank, exc.damaged))
                        bound.warning("image_source_failed", source=source.host, reason=exc.reason)
                        continue
                    seconds = time.perf_counter() - started
                    result = FetchResult(
                        job, checkpoint, rank, source.host, count, total, seconds, present,
                        tuple(failures),
                    )  # fmt: skip
                    bound.info(
                        "image_fetched",
                        source=source.host,
                        files=count,
                        bytes=total,
                        seconds=round(seconds, 3),
                        mb_per_s=round(result.mb_per_s, 1),
                    )
                    return result
            finally:
                context.term()
    except PathRefused as exc:
        raise error(exc.message, failures) from None
    except OSError as exc:
        raise error(f"the store {store_root}: {exc.strerror}", failures) from None
    why = "; ".join(f"{f.host}: {f.reason}" for f in failures) or "no host to fetch it from"
    raise error(
        why, failures, every_copy_damaged=bool(failures) and all(f.damaged for f in failures)
    )


def fetch_ranks(
    fetches: Sequence[RankFetch],
    own: keys.KeyPair,
    store_root: Path,
    *,
    timeout: float = 10.0,
    parallel: int = PARALLEL_RANKS,
) -> list[FetchResult]:
    """:func:`fetch_rank` for each of ``fetches``, ``parallel`` at a time (a thread each); the
    results in their order. Every rank is tried to its end; when any failed, one
    :class:`ImageFetchError` names them all (the others' files stay in place)."""

    def one(fetch: RankFetch) -> FetchResult | ImageFetchError:
        try:
            return fetch_rank(
                fetch.sources,
                own,
                fetch.job,
                fetch.checkpoint,
                fetch.rank,
                fetch.files,
                store_root,
                timeout=timeout,
            )
        except ImageFetchError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="fetch") as pool:
        # Each thread logs with the caller's context (host, component) bound.
        futures = [pool.submit(contextvars.copy_context().run, one, fetch) for fetch in fetches]
        outcomes = [future.result() for future in futures]
    errors = [outcome for outcome in outcomes if isinstance(outcome, ImageFetchError)]
    if len(errors) == 1:
        raise errors[0]
    if errors:
        jobs = {error.job for error in errors}
        checkpoints = {error.checkpoint for error in errors}
        raise ImageFetchError(
            f"{len(errors)} of {len(fetches)} ranks could not be fetched: "
            + "; ".join(error.message for error in errors),
            job=jobs.pop() if len(jobs) == 1 else None,
            checkpoint=checkpoints.pop() if len(checkpoints) == 1 else None,
            failures=[failure for error in errors for failure in error.failures],
            damaged_ranks=[rank for error in errors for rank in error.damaged_ranks],
        )
    return [outcome for outcome in outcomes if isinstance(outcome, FetchResult)]


def _wanted(
    job: str, checkpoint: str, rank: int, files: Sequence[control_pb2.FileDigest]
) -> list[WantedFile]:
    """The manifest's lines as files of this rank, every path checked."""
    check_names(job, checkpoint)
    wanted: list[WantedFile] = []
    seen: set[str] = set()
    for proto in files:
        path = image_path(proto.path)
        if path.rank != rank:
            raise PathRefused(f"{proto.path} is not a file of rank {rank}")
        if proto.path in seen:
            raise PathRefused(f"the manifest lists {proto.path} twice")
        seen.add(proto.path)
        try:
            line = digests.FileDigest.from_proto(proto)
        except CrctlError as exc:  # an algorithm this version does not know
            raise PathRefused(exc.message) from None
        if not line.digest:
            raise PathRefused(f"the manifest records no digest of {proto.path}")
        wanted.append(WantedFile(path, line))
    return wanted
