"""Removing directory trees safely: CRIU mounts a cgroup "yard" in its work directory during a
restore, and a CRIU that was killed leaves it mounted. Deleting through such a mount would reach
into the live cgroup hierarchy, so mounts below a tree are detached before it is removed."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
from pathlib import Path

_MNT_DETACH = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _unescape(field: str) -> str:
    """Mount points in /proc/self/mountinfo escape space, tab, newline and backslash."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path``, deepest first."""
    root = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = _unescape(line.split()[4])
            if point == root or point.startswith(root + "/"):
                found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def detach_mounts_under(path: Path) -> int:
    """Lazily unmount everything mounted at or below ``path``; how many were detached."""
    detached = 0
    for point in mounts_under(path):
        if _libc.umount2(os.fsencode(point), _MNT_DETACH) == 0:
            detached += 1
    return detached


def remove_tree(path: Path) -> None:
    """``rm -rf path`` that never deletes through a mount point."""
    if not path.exists():
        return
    detach_mounts_under(path)
    shutil.rmtree(path, ignore_errors=True)
