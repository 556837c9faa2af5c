"""Freezer cgroups for ranks: ``<root>/crctl/<job>/<rank>``, one per rank.

A rank's whole process tree lives in its own cgroup, so CRIU can quiesce it through the freezer
(CRIU's ``freeze_cgroup`` option, pointed at the rank's cgroup: CRIU freezes that cgroup and its
children and seizes every task in them; a task that is not part of the dumped tree is only
warned about and let go, so one cgroup per rank keeps dumps of other ranks apart).

Both cgroup versions are handled: v1 (a ``freezer`` hierarchy, ``freezer.state``) and v2 (the
unified hierarchy, ``cgroup.freeze``). At restore CRIU puts the tasks back into the cgroup paths it
dumped (its default "soft" cgroup mode creates missing ones), so a restored rank is again in
``crctl/<job>/<rank>`` on its new host."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from crctl.errors import CrctlError, PrerequisiteError

log = structlog.get_logger()

V1_ROOT = Path("/sys/fs/cgroup/freezer")
V2_ROOT = Path("/sys/fs/cgroup")
PREFIX = "crctl"

_NAME = re.compile(r"[A-Za-z0-9_.:@+-]{1,128}")


def _check_name(kind: str, name: str) -> None:
    if not _NAME.fullmatch(name) or name in {".", ".."}:
        raise ValueError(f"{kind} name {name!r} is not usable as a cgroup directory name")


@dataclass(frozen=True)
class FreezerHierarchy:
    """Where freezer cgroups live on this host and which cgroup version they use."""

    root: Path
    version: Literal[1, 2]

    @classmethod
    def detect(cls, root: Path | None = None) -> FreezerHierarchy:
        """The v1 freezer hierarchy if mounted, else the v2 unified hierarchy. With ``root``
        given, only that directory is considered."""
        candidates = [root] if root is not None else [V1_ROOT, V2_ROOT]
        for path in candidates:
            if not (path / "cgroup.procs").exists():
                continue
            if (path / "cgroup.controllers").exists():
                return cls(root=path, version=2)
            if path.name == "freezer" or (path / "freezer.state").exists() or root is not None:
                return cls(root=path, version=1)
        raise PrerequisiteError(
            "no freezer cgroup hierarchy found (looked for "
            + ", ".join(str(p) for p in candidates)
            + ")"
        )

    def rank_path(self, job: str, rank: str) -> Path:
        _check_name("job", job)
        _check_name("rank", rank)
        return self.root / PREFIX / job / rank

    def create(self, job: str, rank: str) -> RankCgroup:
        """Make (or reuse) the rank's cgroup; it starts thawed."""
        path = self.rank_path(job, rank)
        path.mkdir(parents=True, exist_ok=True)
        cgroup = RankCgroup(path=path, version=self.version)
        log.debug("freezer_cgroup_created", path=str(path), version=self.version)
        return cgroup

    def open(self, job: str, rank: str) -> RankCgroup:
        """The rank's cgroup, which need not exist yet (CRIU may create it at restore)."""
        return RankCgroup(path=self.rank_path(job, rank), version=self.version)

    def existing(self) -> list[tuple[str, str, RankCgroup]]:
        """(job, rank, cgroup) of every rank cgroup on this machine, e.g. for an agent that
        restarted and looks for the ranks it was running."""
        found = []
        for path in sorted((self.root / PREFIX).glob("*/*/")):
            if (path / "cgroup.procs").exists():
                found.append((path.parent.name, path.name, RankCgroup(path, self.version)))
        return found


@dataclass(frozen=True)
class RankCgroup:
    """One rank's freezer cgroup."""

    path: Path
    version: Literal[1, 2]

    @property
    def procs_file(self) -> Path:
        return self.path / "cgroup.procs"

    def exists(self) -> bool:
        return self.procs_file.exists()

    def add(self, pid: int) -> None:
        """Move a process (all its threads) into the cgroup. ``0`` means the writer itself."""
        self.procs_file.write_text(f"{pid}\n")

    def pids(self) -> list[int]:
        """Processes in this cgroup and its children (host PIDs)."""
        found: list[int] = []
        if not self.path.exists():
            return found
        for directory, _subdirs, _files in os.walk(self.path):
            try:
                text = (Path(directory) / "cgroup.procs").read_text()
            except FileNotFoundError:
                continue
            found.extend(int(line) for line in text.split())
        return found

    def freeze(self) -> None:
        self._write_state(frozen=True)

    def thaw(self) -> None:
        self._write_state(frozen=False)

    async def freeze_and_wait(self, timeout: float = 10.0) -> float:
        """Freeze the cgroup and wait, polling every millisecond, until it is FROZEN. Returns
        the seconds it took. CRIU's own freeze polls a v1 freezer every 100 ms; a cgroup that is
        already frozen when CRIU starts costs it nothing (CRIU seizes the tasks, and afterwards
        puts the cgroup back into the state it found: the caller thaws it)."""
        started = time.monotonic()
        self.freeze()
        attempt = 0
        while not self.is_frozen():
            attempt += 1
            if time.monotonic() - started > timeout:
                self.thaw()
                raise CrctlError(
                    f"cgroup {self.path} did not freeze within {timeout:.0f}s", phase="freeze"
                )
            if self.version == 1 and attempt % 50 == 0:
                self.freeze()  # a v1 freezer can stall in FREEZING; asking again helps
            await asyncio.sleep(0.001)
        return time.monotonic() - started

    def is_frozen(self) -> bool:
        if self.version == 1:
            return (self.path / "freezer.state").read_text().strip() == "FROZEN"
        return "frozen 1" in (self.path / "cgroup.events").read_text().splitlines()

    def _write_state(self, *, frozen: bool) -> None:
        if self.version == 1:
            (self.path / "freezer.state").write_text("FROZEN\n" if frozen else "THAWED\n")
        else:
            (self.path / "cgroup.freeze").write_text("1\n" if frozen else "0\n")

    def remove(self, *, wait: float = 5.0) -> None:
        """Remove the cgroup once its processes are gone (waiting up to ``wait`` seconds for
        them to exit), then the job's and crctl's directories if they became empty. The caller
        kills the processes; a frozen cgroup is thawed so that killed tasks can die."""
        if not self.path.exists():
            self._remove_empty_parents()
            return
        deadline = time.monotonic() + wait
        thawed = False
        while True:
            if not self.pids():
                try:
                    self._rmdir_tree()
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        raise
            if not thawed and self.path.exists() and self._any_frozen():
                self.thaw()
                thawed = True
            if time.monotonic() >= deadline:
                raise CrctlError(
                    f"freezer cgroup {self.path} still holds processes {self.pids()} "
                    f"after {wait:.1f}s"
                )
            time.sleep(0.02)
        log.debug("freezer_cgroup_removed", path=str(self.path))
        self._remove_empty_parents()

    def _any_frozen(self) -> bool:
        try:
            return self.is_frozen()
        except FileNotFoundError:
            return False

    def _rmdir_tree(self) -> None:
        # Children first (CRIU or the workload may have made sub-cgroups).
        for directory, subdirs, _files in os.walk(self.path, topdown=False):
            for sub in subdirs:
                (Path(directory) / sub).rmdir()
        self.path.rmdir()

    def _remove_empty_parents(self) -> None:
        # <root>/crctl/<job>: remove job then crctl when empty; never anything else.
        job_dir = self.path.parent
        if job_dir.parent.name != PREFIX:
            return
        for parent in (job_dir, job_dir.parent):
            try:
                parent.rmdir()
            except OSError as exc:
                if exc.errno in (errno.EBUSY, errno.ENOTEMPTY, errno.ENOENT):
                    return
                raise
