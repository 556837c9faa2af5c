"""This host's checkpoint images as other hosts see them: the image server that lets them
fetch what this host holds, the fetches this host makes (a restart's ranks it lacks, a
partner's copy after a commit) and the drops retention orders. The transfer itself is
agent.transfer's.

Every host has its store at the same path (``checkpoint_dir``), shared or its own: an order
names a checkpoint's folder as the coordinator sees it, and an agent whose store is elsewhere
refuses to fetch into it (the hosts' configurations disagree)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import structlog

from agent import transfer as image_transfer
from crctl import digests, failpoints, keys
from crctl.errors import CrctlError
from crctl.fs import remove_tree
from crctl.v1 import control_pb2

log = structlog.get_logger()

PAGES_PREFIX = "pages-"  # CRIU's memory page images: a peer's are never needed here


def _sources(entry: control_pb2.RestoreRank) -> list[image_transfer.ImageSource]:
    return [
        image_transfer.ImageSource(host=s.host, endpoint=s.endpoint, server_key=s.server_key)
        for s in entry.sources
    ]


class HostImages:
    def __init__(self, *, host: str, store_root: Path, keypair: keys.KeyPair | None) -> None:
        self.host = host
        self.store_root = store_root
        self._keypair = keypair
        self._allowed: set[bytes] = set()
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._server: image_transfer.ImageServer | None = None
        self.endpoint = ""

    # --- serving ---

    def serve(self, address: str, port: int) -> str:
        """Start the image server on ``address:port``; its endpoint ("" without a key pair)."""
        if self._keypair is None:
            return ""
        self._server = image_transfer.ImageServer(
            self.store_root, address, port, self._keypair, lambda: self._allowed
        )
        self.endpoint = self._server.start()  # it logs image_server_listening
        return self.endpoint

    @property
    def server_key(self) -> bytes:
        return self._keypair.public if self._keypair is not None else b""

    def allow(self, agent_keys: Sequence[bytes]) -> None:
        """The clients the server serves: the agents the coordinator admits."""
        self._allowed = set(agent_keys)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    # --- fetching ---

    def _folder(self, job: str, checkpoint: str, named: str) -> Path:
        own = self.store_root / job / checkpoint
        if Path(named) != own:
            raise CrctlError(
                f"the checkpoint folder {named} the coordinator names is not {own} in this "
                f"host's store (checkpoint_dir {self.store_root}): every host and the "
                "coordinator need the same checkpoint_dir",
                job=job,
                checkpoint=checkpoint,
                host=self.host,
            )
        return own

    async def fetch_missing(
        self,
        job: str,
        checkpoint: str,
        folder: str,
        ranks: Sequence[control_pb2.RestoreRank],
        peers: Sequence[control_pb2.RestoreRank] = (),
    ) -> int:
        """Fetch what this host's store lacks of ``ranks`` (every image) and of ``peers``
        (all but their memory pages: a restore reads only their sockets), each rank from its
        sources in turn, verified as it arrives, the ranks in parallel; the bytes fetched.
        Ranks already here cost a size check of their files."""
        self._folder(job, checkpoint, folder)
        # One fetch of a checkpoint at a time here: a restart's and a partner copy's of the same
        # images (a restart right after the commit) would write the same files.
        async with self._locks.setdefault((job, checkpoint), asyncio.Lock()):
            return await self._fetch_missing(job, checkpoint, ranks, peers)

    async def _fetch_missing(
        self,
        job: str,
        checkpoint: str,
        ranks: Sequence[control_pb2.RestoreRank],
        peers: Sequence[control_pb2.RestoreRank],
    ) -> int:
        wanted: list[tuple[control_pb2.RestoreRank, list[control_pb2.FileDigest]]] = []
        for entry, all_files in [(r, True) for r in ranks] + [(p, False) for p in peers]:
            files = [
                f
                for f in entry.image.files
                if all_files or not Path(f.path).name.startswith(PAGES_PREFIX)
            ]
            if not self._complete(job, checkpoint, files):
                wanted.append((entry, files))
        if not wanted:
            return 0
        if self._keypair is None:
            raise CrctlError(
                f"ranks {[e.rank for e, _ in wanted]} are not in this host's store and this "
                "agent has no key pair to fetch them with",
                job=job,
                checkpoint=checkpoint,
                host=self.host,
            )
        missing_sources = [e.rank for e, _ in wanted if not e.sources]
        if missing_sources:
            raise CrctlError(
                f"the images of ranks {missing_sources} are not in this host's store "
                f"({self.store_root}) and no other host holding them is reachable",
                job=job,
                checkpoint=checkpoint,
                host=self.host,
            )
        keypair = self._keypair
        started = time.monotonic()
        results = await asyncio.to_thread(
            image_transfer.fetch_ranks,
            [
                image_transfer.RankFetch(
                    job=job,
                    checkpoint=checkpoint,
                    rank=entry.rank,
                    files=files,
                    sources=_sources(entry),
                )
                for entry, files in wanted
            ],
            keypair,
            self.store_root,
        )
        fetched: int = sum(r.bytes for r in results)
        log.info(
            "images_fetched",
            job=job,
            checkpoint=checkpoint,
            host=self.host,
            ranks=[e.rank for e, _ in wanted],
            bytes=fetched,
            seconds=round(time.monotonic() - started, 3),
        )
        return fetched

    def _complete(self, job: str, checkpoint: str, files: Sequence[control_pb2.FileDigest]) -> bool:
        """Every file here at its manifest size (their digests are checked by whoever reads
        them: a restore verifies every image)."""
        base = self.store_root / job / checkpoint
        for line in files:
            try:
                if (base / line.path).stat().st_size != line.size:
                    return False
            except OSError:
                return False
        return True

    async def copy(self, order: control_pb2.CopyImages) -> control_pb2.ImagesCopied:
        """A partner's copy: the ranks' images fetched into this host's store, verified."""
        started = time.monotonic()
        result = control_pb2.ImagesCopied(checkpoint=order.checkpoint)
        try:
            await failpoints.reached("agent.images.copy")
            result.bytes = await self.fetch_missing(
                order.job, order.checkpoint, order.checkpoint_dir, list(order.ranks)
            )
        except CrctlError as exc:
            result.ok = False
            result.reason = exc.message
            return result
        result.ok = True
        result.ranks.extend(r.rank for r in order.ranks)
        result.seconds = time.monotonic() - started
        return result

    def verify(self, order: control_pb2.VerifyImages) -> control_pb2.ImagesVerified:
        """This host's copy of the ranks' images against their manifest lines."""
        folder = self._folder(order.job, order.checkpoint, order.checkpoint_dir)
        expected = [digests.FileDigest.from_proto(f) for r in order.ranks for f in r.files]
        result = control_pb2.ImagesVerified(checkpoint=order.checkpoint)
        for problem in digests.verify(folder, expected):
            result.problems.add(path=problem.path, kind=problem.kind, detail=problem.detail)
        return result

    def drop(self, order: control_pb2.DropImages) -> None:
        """Remove this host's images of a retired checkpoint (idempotent)."""
        folder = self._folder(order.job, order.checkpoint, order.checkpoint_dir)
        self._locks.pop((order.job, order.checkpoint), None)
        if folder.is_dir():
            for rank_dir in folder.glob("rank-*"):
                remove_tree(rank_dir)
            remove_tree(folder)
        log.info("images_dropped", job=order.job, checkpoint=order.checkpoint, host=self.host)
