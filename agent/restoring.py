"""One host's part of a coordinated restore (see coordinator.restarts): verify, copy and rewire
the images, lock the host, restore and hold the ranks, unlock, release — or undo it all."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog

from agent import criu, host_files, images, netlock
from agent.host_images import HostImages
from agent.plugin_runner import load_plugins, run_hook
from agent.ranks import (
    RankProcess,
    RestorePipe,
    command_pid,
    prepare_restore,
    rank_log,
    rank_name,
    rank_number,
)
from crctl import failpoints
from crctl.errors import CrctlError, ImageFetchError
from crctl.fs import remove_tree
from crctl.plugins import HostMove, HostSplit, RestartContext, RestartPlugin
from crctl.v1 import control_pb2

log = structlog.get_logger()

# In each restore's folder: which job it restores (read by an agent restarted meanwhile).
RESTORE_RECORD = "restore.json"
COPY_NOTICE_BYTES = 64 << 20  # a working copy that copied this much says so


class RankFailure(CrctlError):
    """A step failed for one rank."""

    def __init__(self, rank: int, message: str) -> None:
        super().__init__(message, phase="restore")
        self.failed_rank = rank


class ImagesDamaged(RankFailure):
    """A rank's images differ from the checkpoint's manifest."""


@dataclass
class RankRestore:
    rank: int
    image: control_pb2.RankImage
    working_dir: Path
    context: RestartContext
    pipe: RestorePipe | None = None
    spec: criu.RestoreSpec | None = None
    pages: criu.LazyPages | None = None  # a lazy restore's daemon, started in prepare
    held: criu.HeldRestore | None = None
    pid: int = 0


def _listening(summary: images.ImageSummary) -> list[images.InetSocket]:
    return [s for s in summary.sockets if s.proto == "tcp" and s.state == "listen"]


def _connections(summary: images.ImageSummary) -> list[netlock.Connection]:
    return [
        netlock.Connection(s.local.address, s.local.port, s.peer.address, s.peer.port)
        for s in summary.sockets
        if s.proto == "tcp" and s.peer is not None and s.state not in ("listen", "close")
    ]


def _port_free(sock: images.InetSocket) -> bool:
    family = socket.AF_INET6 if sock.family == "ipv6" else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((sock.local.address, sock.local.port))
        except OSError:
            return False
    return True


@dataclass
class HostRestore:
    order: control_pb2.PrepareRestore
    host: str
    work_dir: Path
    plugin_dir: Path = Path("/etc/crctl/plugins")
    # Fetches the images this host's store lacks (node-local stores); None: all are here.
    images: HostImages | None = None
    ranks: list[RankRestore] = field(default_factory=list)
    plugins: list[RestartPlugin] = field(default_factory=list)
    locked: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    aborted: bool = False
    released: bool = False
    _tidy: asyncio.Task[None] | None = None
    _peer_folders: dict[Path, str] = field(default_factory=dict)  # -> the host that dumped it

    def __post_init__(self) -> None:
        self.restore_id = self.order.restore
        self.job = self.order.job
        self.lock_table = f"crctl-{self.restore_id}"
        self._log = log.bind(
            job=self.job, checkpoint=self.order.checkpoint, restore=self.restore_id
        )
        self.root = self.work_dir / "restores" / self.restore_id

    def _moves(self) -> dict[str, HostMove]:
        def addresses(host: str) -> tuple[str, ...]:
            return tuple(a for a in self.order.host_addresses.get(host, "").split(",") if a)

        return {
            old: HostMove(
                old_host=old,
                new_host=new,
                old_addresses=addresses(old),
                new_addresses=addresses(new),
            )
            for old, new in self.order.host_map.items()
        }

    def _splits(self) -> dict[str, HostSplit]:
        return {
            old: HostSplit(
                old_host=old,
                new_hosts=tuple(new.split(",")),
                old_addresses=tuple(
                    a for a in self.order.host_addresses.get(old, "").split(",") if a
                ),
            )
            for old, new in self.order.split_hosts.items()
        }

    # --- prepare ---

    async def prepare(self) -> None:
        """Verify, copy, rewire (plugins), check ports and files, lock this host, and start
        CRIU waiting at pre-restore. Before it creates any task CRIU reads every image but the
        memory pages, so the page images (nearly all the bytes) are checked against the
        manifest while the rest goes on; the prepare succeeds, and so the restore step can be
        ordered, only once every image matched."""
        started = time.monotonic()
        self._go_on()
        self.plugins = load_plugins(list(self.order.plugins), self.plugin_dir)
        checkpoint_dir = Path(self.order.checkpoint_dir)
        if self.images is not None:
            try:
                await self.images.fetch_missing(
                    self.job,
                    self.order.checkpoint,
                    self.order.checkpoint_dir,
                    list(self.order.ranks),
                    list(self.order.peer_ranks),
                )
            except ImageFetchError as exc:
                if exc.damaged_ranks:  # every host asked holds a copy unlike the manifest
                    raise ImagesDamaged(exc.damaged_ranks[0], exc.message) from None
                raise
            self._go_on()
        self._peer_folders = self._peer_dirs(checkpoint_dir)
        await self._verify(checkpoint_dir, pages=False)
        pages = asyncio.ensure_future(self._verify(checkpoint_dir, pages=True))
        try:
            connections = await self._make_working_copies(checkpoint_dir)
            rewired = time.monotonic()
            self._go_on()
            netlock.lock_connections(self.lock_table, connections)
            self.locked = True
            await failpoints.reached("agent.restore.locked")
            self._prepare_ranks()
            await self._start_criu()
            criu_waiting = time.monotonic()
        except BaseException:
            pages.cancel()  # its thread finishes on its own; nothing waits for it
            raise
        await pages
        self._log.info(
            "restore_prepared",
            phase="prepare",
            ranks=[r.rank for r in self.ranks],
            lazy_pages=self.order.lazy_pages,
            copy_and_rewire_seconds=round(rewired - started, 4),
            lock_and_criu_seconds=round(criu_waiting - rewired, 4),
            verified_seconds=round(time.monotonic() - started, 4),
        )

    def _go_on(self) -> None:
        if self.aborted:
            raise CrctlError(f"restore {self.restore_id} was aborted", phase="prepare")

    async def _make_working_copies(self, checkpoint_dir: Path) -> list[netlock.Connection]:
        """Each rank's working copy, rewired by the plugins, its files and ports checked;
        returns the TCP connections to lock."""
        moves = self._moves()
        splits = self._splits()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / RESTORE_RECORD).write_text(json.dumps({"job": self.job}))
        close = set(self.order.close_connections)
        connections: list[netlock.Connection] = []
        ends = images.connection_ends(
            {checkpoint_dir / rank_name(r.rank): r.image.host for r in self.order.ranks}
            | self._peer_folders
        )
        for entry in self.order.ranks:
            source = checkpoint_dir / rank_name(entry.rank)
            working = self.root / rank_name(entry.rank)
            made = host_files.unpack(source)
            if made:
                self._log.info("restore_host_files", rank=entry.rank, paths=made[:20])
            # A thread: where the store and the work dir are on different file systems (or
            # mounts), the page images are copied, not linked (GiBs: seconds).
            copy = await asyncio.to_thread(images.make_working_copy, source, working)
            if copy.copied_bytes >= COPY_NOTICE_BYTES:
                self._log.info(
                    "restore_images_copied",
                    rank=entry.rank,
                    bytes=copy.copied_bytes,
                    seconds=round(copy.seconds, 3),
                    why="store and work dir on different file systems: no hard links",
                )
            images.skip_criu_network_lock(working)  # this host's own lock (below) covers it
            handed = images.hand_over_in_flight(working, source, ends)
            if handed:
                self._log.info(
                    "restore_in_flight_handed_over",
                    rank=entry.rank,
                    connections=[str(h) for h in handed],
                )
            context = RestartContext(
                job=self.job,
                checkpoint=self.order.checkpoint,
                rank=entry.rank,
                old_host=entry.image.host,
                new_host=self.host,
                moves=moves,
                address_map=dict(self.order.address_map),
                images_dir=working,
                options=dict(self.order.plugin_options),
                splits=splits,
                local_address_map=dict(entry.local_address_map),
                peer_address_map=dict(entry.peer_address_map),
                **owner_rights(self.order.owner_uid),
            )
            restore = RankRestore(entry.rank, entry.image, working, context)
            self.ranks.append(restore)
            summary = images.inspect(working)
            closing = [
                s
                for s in summary.sockets
                if s.peer is not None
                and f"{s.local.address}:{s.local.port}>{s.peer.address}:{s.peer.port}" in close
            ]
            if closing:
                images.close_connections(working, closing)
                self._log.info(
                    "restore_closing_external",
                    rank=entry.rank,
                    connections=[f"{s.local} -> {s.peer}" for s in closing],
                )
            await run_hook(self.plugins, "before_restore", context)
            summary = images.inspect(working)
            problems = images.verify_regular_files(summary)
            if problems:
                raise RankFailure(
                    entry.rank,
                    "files the rank holds open differ here: " + "; ".join(str(p) for p in problems),
                )
            for listener in _listening(summary):
                if not _port_free(listener):
                    raise RankFailure(
                        entry.rank,
                        f"port {listener.local.port} on {listener.local.address} is already "
                        f"taken on {self.host}",
                    )
            connections.extend(_connections(summary))
        return connections

    def _prepare_ranks(self) -> None:
        """What the restore needs besides CRIU: each rank's cgroup, its new stdout pipe with the
        process that empties it into the rank's log, and CRIU's restore spec."""
        for rank in self.ranks:
            rank.pipe = prepare_restore(
                self.job,
                rank_name(rank.rank),
                stdout_key=rank.image.stdout_pipe,
                log_path=rank_log(self.work_dir, self.job, rank.rank),
            )
            rank.pipe.log_path.parent.mkdir(parents=True, exist_ok=True)
            rank.spec = criu.RestoreSpec(
                images_dir=rank.working_dir,
                work_dir=criu_work_dir(self.root, rank_name(rank.rank)),
                tcp_established=True,
                inherit_fds=rank.pipe.inherit_fds,
                lazy_pages=self.order.lazy_pages,
                wait_at_pre_restore=True,
            )

    async def _start_criu(self) -> None:
        """Start every rank's CRIU restore (and lazy-pages daemon), all at once; each stops at
        pre-restore, before it creates any task, so that the restore step costs only the
        restore itself."""

        async def start(rank: RankRestore) -> None:
            assert rank.spec is not None
            if rank.spec.lazy_pages:
                rank.pages = await criu.start_lazy_pages(rank.spec)
            rank.held = await criu.start_restore(rank.spec, pages=rank.pages)
            await rank.held.ready()

        started = await asyncio.gather(*(start(r) for r in self.ranks), return_exceptions=True)
        for rank, outcome in zip(self.ranks, started, strict=True):
            if isinstance(outcome, BaseException):
                raise RankFailure(rank.rank, str(outcome))

    async def _verify(self, checkpoint_dir: Path, *, pages: bool) -> None:
        """Every rank's image files against the manifest: the memory page images, or all the
        others, and then also those the hand-over of bytes in flight reads of the ranks at the
        other end of their connections."""
        checks = [
            self._verify_rank(
                checkpoint_dir, entry.rank, entry.image, lambda p: images.is_page_image(p) == pages
            )
            for entry in self.order.ranks
        ]
        if not pages:
            present = set(self._peer_folders)
            checks.extend(
                self._verify_rank(
                    checkpoint_dir, entry.rank, entry.image, images.read_for_hand_over
                )
                for entry in self.order.peer_ranks
                if checkpoint_dir / rank_name(entry.rank) in present
            )
        await asyncio.gather(*checks)

    def _peer_dirs(self, checkpoint_dir: Path) -> dict[Path, str]:
        """The image folders of the connected ranks elsewhere that this host can read, each
        with the host that dumped it (a store that holds only this host's ranks leaves their
        bytes in flight to retransmission)."""
        found = {}
        for entry in self.order.peer_ranks:
            folder = checkpoint_dir / rank_name(entry.rank)
            if folder.is_dir():
                found[folder] = entry.image.host
            else:
                self._log.warning("restore_peer_images_missing", rank=entry.rank, path=str(folder))
        return found

    async def _verify_rank(
        self,
        checkpoint_dir: Path,
        rank: int,
        image: control_pb2.RankImage,
        which: Callable[[str], bool],
    ) -> None:
        prefix = rank_name(rank) + "/"
        expected = [
            images.FileDigest.from_proto(f, strip=prefix) for f in image.files if which(f.path)
        ]
        problems = await asyncio.to_thread(
            images.verify, checkpoint_dir / rank_name(rank), expected
        )
        if problems:
            raise ImagesDamaged(
                rank,
                "the checkpoint's images do not match its manifest: "
                + "; ".join(f"{prefix}{p}" for p in problems),
            )

    # --- restore ---

    async def restore(self) -> dict[int, int]:
        """Restore every rank of this host, all at once, and hold them at post-restore."""
        for rank in self.ranks:
            assert rank.held is not None
            rank.held.proceed()
        results = await asyncio.gather(
            *(r.held.held() for r in self.ranks if r.held is not None), return_exceptions=True
        )
        for rank, result in zip(self.ranks, results, strict=True):
            if isinstance(result, BaseException):
                raise RankFailure(rank.rank, str(result))
            rank.pid = result
            rank.context = _with_pid(rank.context, command_pid(result))
        for rank in self.ranks:
            await run_hook(self.plugins, "after_restore", rank.context)
        return {r.rank: r.pid for r in self.ranks}

    def unlock(self) -> None:
        """Let the job's connections through on this host (the lock's table goes after the
        release, off the critical path)."""
        netlock.open_lock(self.lock_table)

    async def release(self) -> list[tuple[int, RankProcess]]:
        """Let the ranks run; returns them for the agent to watch."""
        for rank in self.ranks:
            await run_hook(self.plugins, "before_resume", rank.context)
        started = time.monotonic()
        await asyncio.gather(*(r.held.release() for r in self.ranks if r.held is not None))
        adopted = []
        fills = []
        for rank in self.ranks:
            assert rank.pipe is not None
            process = rank.pipe.adopt(rank.pid)
            # The checkpoint froze the rank's cgroup before CRIU dumped it and CRIU recorded that
            # state; the cgroup made before the restore keeps CRIU from applying it. Make sure.
            if process.cgroup.exists() and process.cgroup.is_frozen():
                process.cgroup.thaw()
                self._log.warning("restored_rank_was_frozen", rank=rank.rank)
            fill = self._watch_pages(rank, process)
            process.memory_restored = fill
            fills.append(fill)
            adopted.append((rank.rank, process))
        self.released = True
        self._log.info(
            "restore_released",
            ranks=[r.rank for r in self.ranks],
            seconds=round(time.monotonic() - started, 4),
        )
        self.finished.set()
        # The ranks run: the opened lock's table goes in the background (removing one waits
        # for the kernel), the working copies once the ranks' memory is all in (at once unless
        # the restore is lazy: its daemons read the page images until then).
        if self.locked:
            netlock.remove_table_soon(self.lock_table)
            self.locked = False
        self._tidy = asyncio.create_task(self._cleanup_after(fills), name=f"tidy-{self.restore_id}")
        return adopted

    def _watch_pages(self, rank: RankRestore, process: RankProcess) -> asyncio.Task[bool]:
        """Whether the rank got all its memory; a rank whose lazy-pages daemon failed is
        killed at once (the kernel would give it zeros for the pages still missing)."""

        async def watch() -> bool:
            assert rank.held is not None
            try:
                await rank.held.pages_in()
            except CrctlError as exc:
                self._log.error("restored_rank_memory_lost", rank=rank.rank, error=exc.message)
                process.kill()
                return False
            return True

        return asyncio.create_task(watch(), name=f"pages-{self.restore_id}-{rank.rank}")

    async def _cleanup_after(self, fills: list[asyncio.Task[bool]]) -> None:
        await asyncio.gather(*fills, return_exceptions=True)
        self._cleanup()

    async def abort(self, reason: str) -> None:
        """Kill whatever was restored, lift the lock, remove the working copies. Again after a
        step that was under way at the first abort finished: it undoes what that step did."""
        if self.released:
            return
        self.aborted = True
        self.finished.set()
        await asyncio.gather(
            *(r.held.abort() for r in self.ranks if r.held is not None), return_exceptions=True
        )
        for rank in self.ranks:
            if rank.pages is not None:
                rank.pages.kill()  # a daemon no restore came to waits forever
        for rank in self.ranks:
            if rank.pipe is not None:
                rank.pipe.discard()
        if self.locked:
            netlock.remove_table(self.lock_table)
            self.locked = False
        self._cleanup()
        self._log.warning("restore_aborted", reason=reason)

    def _cleanup(self) -> None:
        remove_tree(self.root)  # CRIU may have left its cgroup yard mounted in there


def criu_work_dir(root: Path, rank: str) -> Path:
    """Where a rank's CRIU restore and lazy-pages daemon work and log, in a restore folder."""
    return root / "logs" / rank


def restore_job(root: Path) -> str | None:
    """The job a restore folder (``<work dir>/restores/<restore>``) was made for."""
    try:
        job = json.loads((root / RESTORE_RECORD).read_text()).get("job")
    except (OSError, ValueError, AttributeError):
        return None
    return job if isinstance(job, str) else None


async def finish_earlier_restores(
    work_dir: Path, ranks: Mapping[tuple[str, int], RankProcess]
) -> None:
    """After an agent restart: ranks the previous agent restored lazily may still be getting
    their memory from their lazy-pages daemons, which outlive agents. Wait for those to finish
    (a checkpoint meanwhile would dump ranks missing pages: the caller serves nothing until
    then), kill a rank whose daemon failed, and remove the previous agent's working copies."""
    restores = work_dir / "restores"
    if not restores.is_dir():
        return

    async def finish(images_dir: Path, pid: int) -> None:
        root = images_dir.parent
        job, rank = restore_job(root), rank_number(images_dir.name)
        process = ranks.get((job, rank)) if job is not None and rank is not None else None
        if process is None or process.exited:
            # its restore never got to release the rank: it waits for a restore to come
            log.warning("lazy_pages_daemon_orphaned", job=job, rank=rank, daemon_pid=pid)
            criu.kill_outlived(pid)
            return
        log.warning("restored_memory_still_coming", job=job, rank=rank, daemon_pid=pid)
        log_path = criu_work_dir(root, images_dir.name) / criu.LAZY_PAGES_LOG
        try:
            await criu.outlived(pid, images_dir, log_path)
        except CrctlError as exc:
            log.error("restored_rank_memory_lost", job=job, rank=rank, error=exc.message)
            process.kill()

    daemons = criu.running_daemons(restores)
    await asyncio.gather(*(finish(d, pid) for d, pid in daemons.items()))
    for root in restores.iterdir():
        remove_tree(root)


def owner_rights(uid: int) -> dict[str, Any]:
    """The owner's uid, gid and groups on this host, for a plugin's RestartContext."""
    if uid == 0:
        return {}
    entry = pwd.getpwuid(uid)
    groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, entry.pw_gid))))
    return {"owner_uid": uid, "owner_gid": entry.pw_gid, "owner_groups": groups}


def _with_pid(context: RestartContext, pid: int) -> RestartContext:
    """The context with the rank's command's PID (as ``crctl status`` shows it)."""
    return replace(context, pid=pid)
