"""What to dump or restore, and what came of it."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


class NetworkLock(enum.Enum):
    """How CRIU locks TCP connections (``None`` in a spec: CRIU's built-in default)."""

    IPTABLES = 1
    NFTABLES = 2
    SKIP = 3


@dataclass(frozen=True, kw_only=True)
class DumpSpec:
    """One dump of the process tree rooted at ``pid`` (a PID in this process's namespace)."""

    pid: int
    images_dir: Path
    leave_running: bool = False
    tcp_established: bool = True
    # flock, POSIX record and OFD locks the tasks hold are dumped (and taken again at restore)
    # instead of refusing the dump ("Some file locks are hold by dumping tasks").
    file_locks: bool = True
    # Quiesce through this freezer cgroup (the rank's own, see agent.freezer) rather than with
    # ptrace alone: CRIU freezes it and its children, seizes every task there, then thaws it
    # (the tasks stay stopped under ptrace). Tasks outside the dumped tree are let go.
    freeze_cgroup: Path | None = None
    # Stop at CRIU's pre-dump hook until HeldDump.proceed(): CRIU's start-up (process start,
    # kernel probing: tens of milliseconds) then happens before the caller quiesces the tasks.
    wait_at_pre_dump: bool = False
    work_dir: Path | None = None  # where the log goes; default: images_dir
    log_file: str = "dump.log"
    log_level: int = 4
    # Run CRIU in this network namespace (``nsenter --net``): it must be the tasks' own.
    # None: this process's namespace (an agent runs inside its host's namespace).
    netns: Path | None = None
    # nftables: one ``inet CRIU-<id>`` table per dump, which is what a committed dump leaves
    # behind (DumpResult.lock_table names it). CRIU's own default is iptables rules; the method
    # is recorded in the images and a restore always uses the dump's.
    network_lock: NetworkLock = NetworkLock.NFTABLES
    external: tuple[str, ...] = ()  # CRIU ``--external`` keys
    timeout: int | None = None  # CRIU's own limit in seconds for freezing the tasks
    criu_path: str | None = None  # default: ``criu`` on PATH


@dataclass(frozen=True, kw_only=True)
class RestoreSpec:
    """One restore of the tree in ``images_dir``. The tasks land in CRIU's network namespace
    (``netns``, or ours) and the root becomes our child (``rst_sibling``)."""

    images_dir: Path
    work_dir: Path | None = None  # where the log goes; default: images_dir
    log_file: str = "restore.log"
    log_level: int = 4
    tcp_established: bool = True
    file_locks: bool = True  # the locks the dump recorded are taken again
    # No network lock option: a restore always takes the lock method from the images (the
    # dump's), whatever the request says; agent.images.skip_criu_network_lock changes it there.
    # CRIU inherit_fd: key (e.g. "pipe:[1234]") -> fd in this process, handed to CRIU.
    inherit_fds: Mapping[str, int] = field(default_factory=dict)
    # Post-copy: create the tasks without their private anonymous memory, which a
    # ``criu lazy-pages`` daemon copies in while they run (see agent.criu._lazy_pages).
    lazy_pages: bool = False
    # Stop at CRIU's pre-restore hook until HeldRestore.proceed(): CRIU's start-up and reading
    # of the images then happen before the caller's restore step; no task exists yet.
    wait_at_pre_restore: bool = False
    netns: Path | None = None
    external: tuple[str, ...] = ()
    criu_path: str | None = None


@dataclass(frozen=True)
class DumpResult:
    images_dir: Path
    log_path: Path
    left_running: bool
    seconds: float  # from start to CRIU's final answer
    # The nftables table (family inet) still locking the dumped connections on this host after
    # a dump that killed its tasks; None when nothing is left (left running) or not nftables.
    lock_table: str | None = None


@dataclass(frozen=True)
class RestoreResult:
    pid: int  # the restored root's PID, in this process's namespace
    log_path: Path
    seconds: float
