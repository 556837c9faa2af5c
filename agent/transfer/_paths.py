"""Where a checkpoint's files lie in a host's store, ``<store>/<job>/<checkpoint>/rank-<N>/...``,
for the image server (which reads them for peers) and the fetcher (which writes them): names
checked, a manifest path split into its parts, folders opened beneath the store one part at a
time with ``O_NOFOLLOW``, so that no symlink is ever followed below the store's root (one in the
way is refused, wherever it points), whatever is renamed meanwhile."""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from crctl.errors import CrctlError

# A job's name (coordinator/jobs.py allows 64 of these characters) or a checkpoint's id
# (``ckpt-...``): one path component each, so never "." or "..".
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_RANK_DIR = re.compile(r"rank-(0|[1-9][0-9]{0,8})")
_MAX_PATH = 4096
_MAX_PART = 255

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO someone left in a rank's folder must not hang the reader.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class PathRefused(CrctlError):
    """A name or path that does not stay in the store, or something in the way (a symlink, a
    file where a folder should be)."""


@dataclass(frozen=True)
class ImagePath:
    """A file of a checkpoint: ``rank-<rank>/<parts...>`` under the checkpoint's folder."""

    rank: int
    parts: tuple[str, ...]  # below the rank's folder; the last one is the file's name

    @property
    def folders(self) -> tuple[str, ...]:
        """The folders from the checkpoint's folder to the file's."""
        return (f"rank-{self.rank}", *self.parts[:-1])

    @property
    def name(self) -> str:
        return self.parts[-1]

    def __str__(self) -> str:
        return "/".join((f"rank-{self.rank}", *self.parts))


def check_names(job: str, checkpoint: str) -> None:
    for kind, value in (("job name", job), ("checkpoint id", checkpoint)):
        if not _NAME.fullmatch(value):
            raise PathRefused(f"bad {kind} {value!r}: not a name the checkpoint store holds")


def image_path(path: str) -> ImagePath:
    """A manifest's path (relative to the checkpoint's folder) as the file of a rank it names;
    refused unless it is ``rank-<N>/`` and relative parts, none empty, ``.`` or ``..``."""
    if not path or len(path) > _MAX_PATH or "\0" in path:
        raise PathRefused(f"bad image path {path[:200]!r}")
    if path.startswith("/"):
        raise PathRefused(f"image path {path!r} is absolute")
    first, *parts = path.split("/")
    match = _RANK_DIR.fullmatch(first)
    if match is None:
        raise PathRefused(f"image path {path!r} is not in a rank's folder (rank-<N>/...)")
    if not parts:
        raise PathRefused(f"image path {path!r} names a rank's folder, not a file in it")
    for part in parts:
        if part in ("", ".", "..") or len(part) > _MAX_PART:
            raise PathRefused(f"image path {path!r} has a part {part!r} that leaves or breaks it")
    return ImagePath(int(match.group(1)), tuple(parts))


def open_child(parent_fd: int, part: str, shown: str, *, create: bool) -> tuple[int, bool]:
    """The folder ``part`` of the folder open at ``parent_fd``, opened (the caller closes it),
    and whether it was made now (missing, and ``create``). A symlink or a file there is
    refused (``shown`` names the place)."""
    created = False
    try:
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=parent_fd), created
        except FileNotFoundError:
            if not create:
                raise
        try:
            os.mkdir(part, dir_fd=parent_fd)
            created = True
        except FileExistsError:
            pass  # made meanwhile
        return os.open(part, _DIR_FLAGS, dir_fd=parent_fd), created
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise PathRefused(f"{shown} is a symlink or not a folder") from None
        raise


def open_folder(root_fd: int, parts: tuple[str, ...]) -> int:
    """The existing folder ``root/parts...``, opened (the caller closes it), each part a real
    folder (a symlink there is refused)."""
    fd = os.dup(root_fd)
    try:
        for index, part in enumerate(parts):
            child, _ = open_child(fd, part, "/".join(parts[: index + 1]), create=False)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular(folder_fd: int, name: str, shown: str) -> int | None:
    """The regular file ``name`` of the folder opened for reading, or None when there is none;
    a symlink or anything but a regular file there is refused (``shown`` names it)."""
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=folder_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PathRefused(f"{shown} is a symlink") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PathRefused(f"{shown} is not a regular file")
    return fd


def open_store(root: Path, *, create: bool) -> int:
    """The store's root folder, opened (it may be a symlink itself: it is the host's choice)."""
    if create:
        root.mkdir(parents=True, exist_ok=True)
    return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
