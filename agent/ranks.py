"""Running ranks so that they can be checkpointed and restored anywhere.

A rank is started as the init of its own PID namespace (so its PIDs never clash at restore,
FINDINGS 13), in a session of its own, inside its freezer cgroup ``crctl/<job>/<rank>`` (joined
before the command runs), with stdin from /dev/null and stdout+stderr on a pipe. A log holder
process owns the pipe's read end and copies it into the rank's log file (:mod:`agent.logpump`),
so the rank holds no growing regular file (FINDINGS 14), and its stdout outlives the agent.

CRIU dumps the rank's end of that pipe as ``pipe:[<inode>]`` (its write end only: no pipe data
is saved). At restore, :func:`prepare_restore` makes a fresh pipe whose write end CRIU hands to
the restored tasks in place of the old one (``inherit_fd`` with that key), and whose read end is
pumped into the same log. :attr:`RankProcess.stdout_key` is the key to record with a checkpoint.

The agent is a child subreaper: a launched rank's init is adopted by the agent when the launcher
exits, and a restored one is created as the agent's child by CRIU (``rst_sibling``), so the
agent collects every rank's exit status. :func:`launch` and :func:`prepare_restore` make the
agent a subreaper and start the orphan reaper that this role requires
(:func:`agent.reaper.ensure_orphan_reaper`).

To end a rank use :meth:`RankProcess.kill` (SIGKILL to the init: a PID-namespace init ignores
SIGTERM from outside, and the kernel then kills the whole namespace)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.freezer import FreezerHierarchy, RankCgroup
from agent.logpump import LogPump
from agent.reaper import PinnedProcess, ensure_orphan_reaper
from crctl.errors import CrctlError

log = structlog.get_logger()

LAUNCHER = Path(__file__).with_name("rank_launcher.py")
LAUNCHER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_DRAIN_AFTER_EXIT = 5.0


def rank_name(rank: int) -> str:
    """A rank's name in cgroups, image folders and log files: ``rank-<N>``."""
    return f"rank-{rank}"


def rank_number(name: str) -> int | None:
    """The inverse of :func:`rank_name`; None for any other name."""
    number = name.removeprefix("rank-")
    return int(number) if name.startswith("rank-") and number.isdigit() else None


def rank_log(work_dir: Path, job: str, rank: int) -> Path:
    """Where an agent keeps a rank's stdout (whichever host it was launched or restored on)."""
    return work_dir / "logs" / job / f"{rank_name(rank)}.log"


def pipe_key(inode: int) -> str:
    """CRIU's name for a pipe, as used by ``inherit_fd``."""
    return f"pipe:[{inode}]"


class RankProcess:
    """One incarnation of a rank: launched, or restored from a checkpoint."""

    def __init__(
        self,
        *,
        job: str,
        rank: str,
        process: PinnedProcess,
        log_path: Path,
        pipe_inode: int,
        cgroup: RankCgroup,
        pump: LogPump,
    ) -> None:
        self.job = job
        self.rank = rank
        self._process = process
        self.log_path = log_path
        self.pipe_inode = pipe_inode
        self.cgroup = cgroup
        self._pump = pump
        # A lazily restored rank's memory is still being copied in until this is done (True:
        # all in; False: the copy failed and the rank was killed). None: all in from the start.
        self.memory_restored: asyncio.Future[bool] | None = None

    @property
    def pid(self) -> int:
        """The rank's root (its PID-namespace init), as a PID of the agent's namespace."""
        return self._process.pid

    @property
    def command_pid(self) -> int:
        """The rank's command (the init's child, running as the owner); the init's PID once
        the command is gone."""
        return command_pid(self.pid)

    async def memory_complete(self) -> bool:
        """Wait until the rank has all its memory (a dump before would miss pages); False if it
        never will."""
        if self.memory_restored is None:
            return True
        return await asyncio.shield(self.memory_restored)

    @property
    def ns_pid(self) -> int | None:
        """The root's PID inside its own namespace (1 for a rank), None once it is gone."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
        return None

    @property
    def stdout_key(self) -> str:
        """The ``inherit_fd`` key of this incarnation's stdout pipe in its checkpoints."""
        return pipe_key(self.pipe_inode)

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    @property
    def exited(self) -> bool:
        return self._process.exited

    async def wait(self) -> int | None:
        """Wait for the rank's root to exit, then for its output to reach the log. Returns the
        exit code, minus the killing signal, or None if the status could not be collected."""
        code = await self._process.wait()
        try:
            await asyncio.wait_for(self._pump.drained(), _DRAIN_AFTER_EXIT)
        except TimeoutError:
            log.warning(
                "rank_output_not_drained", job=self.job, rank=self.rank, log=str(self.log_path)
            )
            self._pump.close()
        return code

    def kill(self) -> bool:
        """SIGKILL the rank's root (thawing its cgroup first so frozen tasks can die). True if
        the signal was sent."""
        with contextlib.suppress(OSError):  # also if FREEZING; harmless if thawed or gone
            self.cgroup.thaw()
        sent = self._process.send_signal(signal.SIGKILL)
        log.info("rank_killed", job=self.job, rank=self.rank, pid=self.pid, sent=sent)
        return sent

    def close(self) -> None:
        """Forget the process (stop pumping, drop the pidfd); does not kill it."""
        self._pump.close()
        self._process.close()


def command_pid(init: int) -> int:
    """The first child of a rank's init (its command), else the init itself."""
    try:
        children = Path(f"/proc/{init}/task/{init}/children").read_text().split()
    except OSError:
        return init
    return int(children[0]) if children else init


async def _command_started(init: int, wait: float = 2.0) -> None:
    """Wait (briefly) until the init has forked the command, so its PID can be reported."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while command_pid(init) == init and loop.time() < deadline:
        if not Path(f"/proc/{init}").exists():
            return
        await asyncio.sleep(0.001)


def _environment_memfd(env: Mapping[str, str]) -> int:
    """A memfd holding ``env`` (JSON) for the launcher to hand to the rank's last step."""
    fd = os.memfd_create("crctl-rank-env", os.MFD_CLOEXEC)
    os.write(fd, json.dumps(dict(env)).encode())
    return fd


def _nsenter(netns: Path | None) -> list[str]:
    return ["nsenter", f"--net={netns}", "--"] if netns is not None else []


@dataclass(frozen=True)
class RunAs:
    """Whom a rank's command runs as, where, with which umask."""

    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()
    cwd: Path | None = None  # None: the rank's own directory (work_dir)
    umask: int = 0o022

    def launcher_args(self, work_dir: Path) -> list[str]:
        return [
            "--user",
            f"{self.uid}:{self.gid}:{','.join(map(str, self.groups))}",
            "--cwd",
            str(self.cwd or work_dir),
            "--umask",
            f"{self.umask:o}",
        ]


async def launch(
    job: str,
    rank: str,
    argv: Sequence[str],
    *,
    work_dir: Path,
    log_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    netns: Path | None = None,
    freezer: FreezerHierarchy | None = None,
    run_as: RunAs | None = None,
) -> RankProcess:
    """Start ``argv`` as rank ``rank`` of ``job``, its init in ``work_dir`` (the rank's own).

    ``run_as`` says whose credentials, which working directory and umask the command gets
    (default: root, in ``work_dir``). ``log_path`` defaults to ``work_dir/<rank>.log``; ``env``
    defaults to the agent's; ``netns`` runs the rank in that network namespace (None: the
    agent's own)."""
    if not argv:
        raise ValueError("a rank needs a command")
    ensure_orphan_reaper()
    hierarchy = freezer or FreezerHierarchy.detect()
    cgroup = hierarchy.create(job, rank)
    log_path = log_path or work_dir / f"{rank}.log"
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    pipe_inode = os.fstat(write_fd).st_ino
    pump = LogPump(read_fd, log_path)
    env_fd = _environment_memfd(os.environ if env is None else env)
    command = [
        *_nsenter(netns),
        sys.executable,
        "-I",
        "-S",
        str(LAUNCHER),
        "--cgroup-procs",
        str(cgroup.procs_file),
        "--init-cwd",
        str(work_dir),
        *(run_as or RunAs()).launcher_args(work_dir),
        "--stdout-fd",
        str(write_fd),
        "--env-fd",
        str(env_fd),
        "--",
        *argv,
    ]
    try:
        launcher = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            pass_fds=(write_fd, env_fd),
            env={"PATH": LAUNCHER_PATH},  # the rank's environment is in env_fd, not here
        )
        out, err = await launcher.communicate()
    except BaseException:
        os.close(write_fd)
        os.close(env_fd)
        pump.close()
        raise
    os.close(write_fd)
    os.close(env_fd)
    if launcher.returncode != 0:
        await pump.abandon()
        with contextlib.suppress(CrctlError, OSError):
            cgroup.remove(wait=1.0)
        reason = err.decode(errors="replace").strip() or f"exit code {launcher.returncode}"
        raise CrctlError(
            f"could not launch rank {rank} of job {job}: {reason}", job=job, phase="launch"
        )
    pid = int(json.loads(out)["pid"])
    try:
        process = PinnedProcess(pid)
    except ProcessLookupError:
        await pump.abandon()
        raise CrctlError(
            f"rank {rank} of job {job} (pid {pid}) vanished at launch", job=job, phase="launch"
        ) from None
    await _command_started(pid)
    log.info(
        "rank_launched", job=job, rank=rank, pid=pid, log=str(log_path), cgroup=str(cgroup.path)
    )
    return RankProcess(
        job=job,
        rank=rank,
        process=process,
        log_path=log_path,
        pipe_inode=pipe_inode,
        cgroup=cgroup,
        pump=pump,
    )


class RestorePipe:
    """The stdout pipe for a rank about to be restored: pass :attr:`inherit_fds` to CRIU
    (``RestoreSpec.inherit_fds``), then :meth:`adopt` the restored root, or :meth:`discard`."""

    def __init__(
        self, *, job: str, rank: str, stdout_key: str, log_path: Path, cgroup: RankCgroup
    ) -> None:
        self.job = job
        self.rank = rank
        self.log_path = log_path
        self._cgroup = cgroup
        self._discarded = False
        read_fd, self._write_fd = os.pipe2(os.O_CLOEXEC)
        self.pipe_inode = os.fstat(self._write_fd).st_ino
        # Pump from the start: CRIU reopens the write end, which needs a reader present.
        self._pump = LogPump(read_fd, log_path)
        self.inherit_fds: dict[str, int] = {stdout_key: self._write_fd}

    def _close_write_end(self) -> None:
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1
            self.inherit_fds = {}

    def adopt(self, pid: int) -> RankProcess:
        """The restored root (from ``HeldRestore.held()``): from now on a RankProcess. Call it
        at ``post-restore`` or after release; CRIU has its own copy of the write end."""
        self._close_write_end()
        process = PinnedProcess(pid)
        log.info("rank_restored", job=self.job, rank=self.rank, pid=pid, log=str(self.log_path))
        return RankProcess(
            job=self.job,
            rank=self.rank,
            process=process,
            log_path=self.log_path,
            pipe_inode=self.pipe_inode,
            cgroup=self._cgroup,
            pump=self._pump,
        )

    def discard(self) -> None:
        """The restore failed or was aborted (CRIU killed what it had restored): close both
        ends and remove the rank's cgroup made for it. Once: the cgroup's path is the rank's,
        and a later restore of the same rank on this host makes it again."""
        if self._discarded:
            return
        self._discarded = True
        self._close_write_end()
        self._pump.close()
        try:
            self._cgroup.remove(wait=1.0)
        except (CrctlError, OSError) as exc:
            log.warning("restore_cgroup_not_removed", cgroup=str(self._cgroup.path), error=str(exc))


def prepare_restore(
    job: str,
    rank: str,
    *,
    stdout_key: str,
    log_path: Path,
    freezer: FreezerHierarchy | None = None,
) -> RestorePipe:
    """A fresh stdout pipe replacing the checkpointed one named ``stdout_key``, pumped into
    ``log_path`` (appending). ``agent.criu`` restores the root as our child (``rst_sibling``),
    so :meth:`RestorePipe.adopt` can collect its exit status."""
    ensure_orphan_reaper()
    hierarchy = freezer or FreezerHierarchy.detect()
    return RestorePipe(
        job=job,
        rank=rank,
        stdout_key=stdout_key,
        log_path=log_path,
        # Made before CRIU runs: CRIU then leaves its properties alone, in particular the
        # freezer state it recorded (FROZEN: a checkpoint freezes the rank before CRIU seizes it).
        cgroup=hierarchy.create(job, rank),
    )


def pid_namespace_init(cgroup: RankCgroup) -> int | None:
    """The host PID of the process that is PID 1 of its namespace in the rank's cgroup."""
    for pid in cgroup.pids():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("NSpid:") and line.split()[-1] == "1" and len(line.split()) > 2:
                return pid
    return None


def adopt_running(job: str, rank: str, pid: int, cgroup: RankCgroup, log_path: Path) -> RankProcess:
    """A rank that runs already (started by an agent that has since restarted): track it again.
    Its log holder goes on by itself; its exit status is not ours to collect (not our child)."""
    process = PinnedProcess(pid)
    pipe_inode = os.stat(f"/proc/{pid}/fd/1").st_ino
    log.info("rank_adopted", job=job, rank=rank, pid=pid, log=str(log_path))
    return RankProcess(
        job=job,
        rank=rank,
        process=process,
        log_path=log_path,
        pipe_inode=pipe_inode,
        cgroup=cgroup,
        pump=LogPump(None, log_path),
    )
