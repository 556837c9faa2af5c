"""Checks of what a restore will find besides the manifest's digests (crctl.digests): which
images it reads last, and regular files that differ from what a dump recorded."""

from __future__ import annotations

import stat
from pathlib import Path

from agent.images._inspect import ImageSummary
from crctl.digests import Problem


def is_page_image(path: str) -> bool:
    """Whether an image file holds memory pages (``pages-<id>.img``): a restore reads those
    only when it fills the memory of tasks it has created, after everything else."""
    return Path(path).name.startswith("pages-")


def verify_regular_files(summary: ImageSummary, root: Path = Path("/")) -> list[Problem]:
    """Whether the regular files a dump uses are present as CRIU will check them at restore
    (size and mode), under ``root`` (the restoring host's file system). Ghost files are in the
    images and files with no recorded size (O_APPEND logs) need only exist."""
    problems: list[Problem] = []
    for f in summary.regular_files:
        if f.ghost:
            continue
        path = root / f.path.lstrip("/")
        try:
            st = path.stat()
        except FileNotFoundError:
            problems.append(Problem(f.path, "missing", "missing"))
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(Problem(f.path, "not-regular", "not a regular file"))
        elif f.size is not None and st.st_size != f.size:
            problems.append(Problem(f.path, "size", f"size {st.st_size}, dumped at {f.size}"))
        elif st.st_mode != f.mode:
            problems.append(Problem(f.path, "mode", f"mode {st.st_mode:o}, dumped with {f.mode:o}"))
    return problems
