"""One host's part of a two-phase checkpoint: dump every local rank of the job with CRIU, hold
them frozen at ``post-dump``, vote, then commit or abort on the coordinator's word — or abort by
itself when the hold outlives its deadline (the coordinator may be gone)."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from agent import criu, host_files, images, netlock, uncarried
from agent.ranks import RankProcess, rank_name
from agent.thaw_guard import ThawGuard
from crctl import connections, failpoints
from crctl.errors import CrctlError
from crctl.v1 import control_pb2

log = structlog.get_logger()

LOGS_DIR = "logs"
# A checkpoint store with less room than this is full for any dump.
FULL_BELOW_BYTES = 1 << 20


def socket_info(socket: images.InetSocket) -> control_pb2.SocketInfo:
    return control_pb2.SocketInfo(
        family=socket.family,
        state=socket.state,
        proto=socket.proto,
        local_address=socket.local.address,
        local_port=socket.local.port,
        peer_address=socket.peer.address if socket.peer else "",
        peer_port=socket.peer.port if socket.peer else 0,
    )


class _RankError(CrctlError):
    """One rank's CRIU failed."""

    def __init__(self, rank: int, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.failed_rank = rank
        self.cause = cause


@dataclass
class HostCheckpoint:
    """This host's ranks of one checkpoint, from prepare to commit or abort."""

    job: str
    checkpoint: str
    images_dir: Path
    leave_running: bool
    ranks: dict[int, RankProcess]
    host: str
    host_addresses: list[str] = field(default_factory=list)
    # Folders whose files are this host's own: what the ranks use there goes with the images
    # (agent.host_files).
    private_roots: tuple[Path, ...] = ()
    dumps: dict[int, criu.HeldDump] = field(default_factory=dict)
    frozen_at: float = 0.0
    _started: float = 0.0
    _freeze_started: float = 0.0
    _guard: ThawGuard | None = None
    _sockets: dict[int, list[control_pb2.SocketInfo]] = field(default_factory=dict)
    # The connections this host locked for the dump (crctl's lock, not CRIU's; see freeze_and_dump)
    _locked: frozenset[netlock.Connection] | None = None
    _dump_seconds: float = 0.0
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    outcome: str = ""

    def __post_init__(self) -> None:
        self._log = log.bind(job=self.job, checkpoint=self.checkpoint)
        self.lock_table = f"crctl-{self.checkpoint}"

    async def ready(self) -> control_pb2.CheckpointVote | None:
        """Start CRIU for every rank, all at once; each waits at pre-dump, before touching its
        rank, so that its start-up costs the application nothing. None once all wait there;
        else a "no" vote (and every CRIU started is rolled back)."""
        self._started = time.monotonic()
        self._log.info("checkpoint_prepare", phase="prepare", ranks=sorted(self.ranks))
        try:
            await self._memory_complete()
            uncarried.require_carriable({n: p.cgroup.pids() for n, p in self.ranks.items()})
            for number, exc in await self._start_dumps():
                raise _RankError(number, exc)
            if self.finished.is_set():
                raise CrctlError(f"checkpoint {self.outcome} while preparing")
        except (CrctlError, OSError) as exc:
            return await self._vote_no(exc)
        self._log.info(
            "checkpoint_ready",
            phase="prepare",
            seconds=round(time.monotonic() - self._started, 4),
        )
        return None

    async def _memory_complete(self) -> None:
        """Wait for ranks restored lazily to have all their memory: CRIU dumps only the pages
        present, so one dumped before would lose the rest."""
        complete = await asyncio.gather(*(p.memory_complete() for p in self.ranks.values()))
        for number, ok in zip(self.ranks, complete, strict=True):
            if not ok:
                raise _RankError(number, CrctlError("its memory was lost at its restore"))

    async def freeze_and_dump(self) -> control_pb2.CheckpointVote:
        """Freeze every rank, let CRIU dump them and hold them at post-dump; vote yes with the
        manifest (or, for ranks left running, with the manifest to follow at commit) or no."""
        vote = control_pb2.CheckpointVote(checkpoint=self.checkpoint)
        try:
            if self.finished.is_set() or not self.dumps:
                raise CrctlError(f"checkpoint {self.outcome or 'not ready'} here")
            # Quiesce every rank of this host at once through its freezer cgroup: constant cost
            # whatever the number of threads, and no signal the application could see.
            self._freeze_started = time.monotonic()
            self._guard = ThawGuard(
                [p.cgroup for p in self.ranks.values()], unlock_table=self.lock_table
            )
            await asyncio.gather(*(p.cgroup.freeze_and_wait() for p in self.ranks.values()))
            if self.finished.is_set():
                raise CrctlError(f"checkpoint {self.outcome} while preparing")
            self._lock_connections()
            for dump in self.dumps.values():
                dump.proceed()
            await failpoints.reached("agent.checkpoint.dumping")  # ranks frozen, CRIU at work
            held = await asyncio.gather(
                *(d.held() for d in self.dumps.values()), return_exceptions=True
            )
            for number, outcome in zip(self.dumps, held, strict=True):
                if isinstance(outcome, BaseException):
                    raise _RankError(number, outcome)
            if self.finished.is_set():
                raise CrctlError(f"checkpoint {self.outcome} while preparing")
            self._sockets = {n: self._inspect(n) for n in self.ranks}
            self._check_locked()
            self._pack_host_files()
            self.frozen_at = time.monotonic()
            self._dump_seconds = self.frozen_at - self._started
            # Ranks that stop with the checkpoint are checksummed before the vote (the coordinator
            # records the manifest before it kills them). Ranks left running are checksummed
            # after their release: nothing competes with the dumps of other ranks and hosts
            # while the application stands still.
            images = [] if self.leave_running else await self._images()
        except (CrctlError, OSError) as exc:
            return await self._vote_no(exc)
        vote.yes = True
        vote.ranks.extend(images)
        own = connections.addresses(self.host_addresses)
        for sockets in self._sockets.values():  # the coordinator judges which leave the job
            vote.connections.extend(connections.outside(sockets, own))
        self._log.info(
            "checkpoint_voted_yes",
            phase="prepare",
            seconds=round(time.monotonic() - self._started, 4),
            frozen_seconds=round(time.monotonic() - self._freeze_started, 4),
        )
        return vote

    async def _vote_no(self, exc: CrctlError | OSError) -> control_pb2.CheckpointVote:
        await self.abort(f"prepare failed: {exc}")
        await self._roll_back()  # also what the prepare started after an earlier abort
        vote = control_pb2.CheckpointVote(checkpoint=self.checkpoint, yes=False, failed_rank=-1)
        if isinstance(exc, _RankError):
            vote.failed_rank = exc.failed_rank
            vote.reason = f"rank {exc.failed_rank}: {exc.cause}"
        else:
            vote.reason = str(exc)
        full = store_full(self.images_dir)
        if full:
            # CRIU's own message may be cut short: its log is on the same file system.
            vote.reason = f"{full}; {vote.reason}"
        return vote

    def _lock_connections(self) -> None:
        """Lock the TCP connections of the frozen ranks, as CRIU would (so that no byte moves
        while their state is dumped), but in a table of ours: CRIU removes its table before it
        lets the ranks go, and removing a table waits for the kernel (milliseconds of frozen
        time); ours is opened in a fraction of a millisecond and removed afterwards."""
        pids = [pid for p in self.ranks.values() for pid in p.cgroup.pids()]
        connections = netlock.task_connections(pids)
        netlock.lock_connections(self.lock_table, connections)
        self._locked = frozenset(connections)

    def _check_locked(self) -> None:
        """Refuse a dump holding a TCP connection that was not locked while it was dumped (the
        lock holds addresses as packets carry them: netlock.task_connections)."""
        locked = self._locked or frozenset()
        for number, sockets in self._sockets.items():
            for s in filter(connections.is_connection, sockets):
                dumped = netlock.Connection(
                    netlock.wire_address(s.local_address),
                    s.local_port,
                    netlock.wire_address(s.peer_address),
                    s.peer_port,
                )
                if dumped not in locked:
                    raise _RankError(
                        number,
                        CrctlError(
                            f"connection {s.local_address}:{s.local_port} -> "
                            f"{s.peer_address}:{s.peer_port} was dumped without being locked"
                        ),
                    )

    def _open_lock(self) -> None:
        """Let the connections through again (the ranks are still frozen) and remove the table
        once they run, off the critical path."""
        if self._locked is None:
            return
        self._locked = None
        try:
            netlock.open_lock(self.lock_table)
        except CrctlError as exc:  # then removing it is the way to unlock
            self._log.error("checkpoint_unlock_failed", error=exc.message)
            netlock.remove_table(self.lock_table)
            return
        netlock.remove_table_soon(self.lock_table)

    async def _start_dumps(self) -> list[tuple[int, BaseException]]:
        """One CRIU per rank, started together; each waits at pre-dump. Every CRIU that did
        start is kept in ``self.dumps`` (so an abort rolls it back) even if another failed;
        returns the ranks whose CRIU did not get there, with the reason."""

        async def start(number: int, process: RankProcess) -> None:
            rank_dir = self.images_dir / rank_name(number)
            rank_dir.mkdir(parents=True, exist_ok=False)
            # CRIU's log keeps growing after post-dump: it lives beside the images, not among
            # them, so the manifest's sizes and checksums stay true.
            log_dir = self.images_dir / LOGS_DIR / rank_name(number)
            log_dir.mkdir(parents=True, exist_ok=True)
            dump = await criu.start_dump(
                criu.DumpSpec(
                    pid=process.pid,
                    images_dir=rank_dir,
                    work_dir=log_dir,
                    leave_running=self.leave_running,
                    freeze_cgroup=process.cgroup.path,
                    wait_at_pre_dump=True,
                    network_lock=criu.NetworkLock.SKIP,  # this host locks them (see above)
                )
            )
            self.dumps[number] = dump
            await dump.ready()

        started = await asyncio.gather(
            *(start(n, p) for n, p in self.ranks.items()), return_exceptions=True
        )
        return [
            (number, outcome)
            for number, outcome in zip(self.ranks, started, strict=True)
            if isinstance(outcome, BaseException)
        ]

    def _pack_host_files(self) -> None:
        """The host's own files the ranks use, packed while they stand frozen."""
        for number in self.ranks:
            packed = host_files.pack(self.images_dir / rank_name(number), self.private_roots)
            if packed:
                self._log.info("checkpoint_host_files", rank=number, paths=packed[:20])

    def _inspect(self, number: int) -> list[control_pb2.SocketInfo]:
        """The rank's INET sockets, from its images."""
        summary = images.inspect(self.images_dir / rank_name(number))
        return [socket_info(s) for s in summary.sockets]

    async def _images(self) -> list[control_pb2.RankImage]:
        """Every rank's manifest entry, its files checksummed in parallel threads."""
        digests = await asyncio.gather(*(asyncio.to_thread(self._digest, n) for n in self.ranks))
        return [self._rank_image(n, d) for n, d in zip(self.ranks, digests, strict=True)]

    def _digest(self, number: int) -> list[control_pb2.FileDigest]:
        """The manifest's lines for a rank's images (paths relative to the checkpoint)."""
        prefix = rank_name(number)
        return [
            d.to_proto(prefix=f"{prefix}/") for d in images.digest_files(self.images_dir / prefix)
        ]

    def _rank_image(
        self, number: int, files: list[control_pb2.FileDigest]
    ) -> control_pb2.RankImage:
        process = self.ranks[number]
        return control_pb2.RankImage(
            rank=number,
            host=self.host,
            pid=process.pid,
            files=files,
            bytes=sum(f.size for f in files),
            dump_seconds=self._dump_seconds,
            stdout_pipe=process.stdout_key,
            host_addresses=self.host_addresses,
            sockets=self._sockets.get(number, []),
        )

    async def commit(self) -> control_pb2.CommitResult:
        result = control_pb2.CommitResult(checkpoint=self.checkpoint, ok=True)
        if self.leave_running:
            # The images are written: let the connections through at once, before CRIU lets
            # the ranks go. Every host gets the commit at the same moment, so all locks are
            # open before any rank runs again and sends to a peer (a packet dropped by a lock
            # still closed elsewhere would cost a retransmission timeout, 200 ms or more).
            self._open_lock()
        outcomes = await asyncio.gather(
            *(d.commit() for d in self.dumps.values()), return_exceptions=True
        )
        # CRIU leaves the cgroup frozen as it found it: the ranks run again only now. (Ranks
        # that stopped with the checkpoint are gone; their lock goes with them.)
        self._open_lock()
        self._thaw()
        # From the freeze to the release: how long the application stood still on this host.
        result.frozen_seconds = time.monotonic() - self._freeze_started
        failures = [str(o) for o in outcomes if isinstance(o, BaseException)]
        if not failures and self.leave_running:
            try:
                result.ranks.extend(await self._images())
            except (CrctlError, OSError) as exc:
                failures.append(f"cannot checksum the images: {exc}")
        if failures:
            result.ok = False
            result.reason = "; ".join(failures)
        # CRIU leaves its network lock behind after a dump that killed the tasks (FINDINGS 12);
        # the connections are gone with the tasks, so lift it.
        for outcome in outcomes:
            if isinstance(outcome, criu.DumpResult) and outcome.lock_table:
                netlock.remove_table(outcome.lock_table)
        self.outcome = "committed"
        self.finished.set()
        self._log.info(
            "checkpoint_committed",
            phase="commit",
            ok=result.ok,
            frozen_seconds=round(result.frozen_seconds, 4),
        )
        return result

    def _thaw(self) -> None:
        """Resume the ranks we froze: CRIU leaves a cgroup it found frozen frozen again. Safe to
        repeat; also covers a freeze that completed after an abort had already thawed."""
        if self._guard is not None:
            self._guard.release()
            self._guard = None
        for process in self.ranks.values():
            cgroup = process.cgroup
            try:
                if cgroup.exists() and cgroup.is_frozen():
                    cgroup.thaw()
            except OSError as exc:
                self._log.error("rank_thaw_failed", cgroup=str(cgroup.path), error=str(exc))

    async def _roll_back(self) -> None:
        """Every dump answered "no" (CRIU rolls back) and every rank thawed. Idempotent, so a
        prepare that was still starting dumps or freezing when an abort came can finish it."""
        await asyncio.gather(*(d.abort() for d in self.dumps.values()), return_exceptions=True)
        self._open_lock()
        self._thaw()

    async def abort(self, reason: str) -> None:
        """CRIU rolls back at post-dump: the ranks resume. The images are removed by the
        coordinator (or by the caller for a self-abort)."""
        if self.finished.is_set():
            return
        self.outcome = "aborted"
        self.finished.set()
        await self._roll_back()
        self._log.warning("checkpoint_aborted", phase="abort", reason=reason)


def store_full(images_dir: Path) -> str | None:
    """Why a dump into ``images_dir`` cannot succeed if its file system is full, else None."""
    try:
        st = os.statvfs(images_dir)
    except OSError:
        return None
    free = st.f_bavail * st.f_frsize
    if free >= FULL_BELOW_BYTES:
        return None
    return f"No space left on device: the checkpoint store {images_dir} is full ({free} bytes free)"
