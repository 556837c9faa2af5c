"""The fetcher's side of this host's store: a checkpoint's folder with its folders opened once
(made when missing, never through a symlink), the files already in place checked against the
manifest, and files arriving: written to ``.<name>.part`` in their folder, hashed as they grow,
checked, fsync'd and renamed into place; the folders whose entries changed fsync'd at the end."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from agent.transfer._paths import ImagePath, PathRefused, open_child, open_regular, open_store
from crctl import digests
from crctl.errors import CrctlError

_PARTIAL = ".{}.part"
_FILE_MODE = 0o600  # as CRIU writes its images


@dataclass(frozen=True)
class WantedFile:
    """A manifest's line: where the file goes and what it must be."""

    path: ImagePath
    line: digests.FileDigest


class Unverified(CrctlError):
    """The bytes that arrived are not the file the manifest lists."""


class CheckpointFolder:
    """``<store>/<job>/<checkpoint>/`` of this host, open (a context manager)."""

    def __init__(self, root: Path, job: str, checkpoint: str) -> None:
        self._root = root
        self._base = (job, checkpoint)
        self._folders: dict[tuple[str, ...], int] = {}
        self._changed: set[tuple[str, ...]] = set()

    def __enter__(self) -> CheckpointFolder:
        self._folders[()] = open_store(self._root, create=True)
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            for parts in sorted(self._changed, key=len, reverse=True):
                os.fsync(self._folders[parts])
        finally:
            for fd in self._folders.values():
                os.close(fd)

    def folder(self, path: ImagePath) -> int:
        """The folder of ``path`` (made when missing), open."""
        return self._folder((*self._base, *path.folders))

    def _folder(self, parts: tuple[str, ...]) -> int:
        fd = self._folders.get(parts)
        if fd is None:
            parent = self._folder(parts[:-1])
            fd, created = open_child(parent, parts[-1], "/".join(parts), create=True)
            self._folders[parts] = fd
            if created:
                self._changed.add(parts[:-1])
        return fd

    def changed(self, path: ImagePath) -> None:
        """The folder of ``path`` has a new entry: fsync'd at the end."""
        self._changed.add((*self._base, *path.folders))

    def in_place(self, file: WantedFile) -> bool:
        """Whether the file is in the store as the manifest has it (False: absent); raises
        :class:`PathRefused` for one that differs or anything else in its place."""
        fd = open_regular(self.folder(file.path), file.path.name, str(file.path))
        if fd is None:
            return False
        try:
            size = os.fstat(fd).st_size
            line = file.line
            if size != line.size:
                raise PathRefused(
                    f"{file.path} is in the store already with {size} bytes, "
                    f"the manifest says {line.size}"
                )
            digest = digests.digest_fd(fd, line.algorithm)
            if digest != line.digest:
                raise PathRefused(
                    f"{file.path} is in the store already and differs from the manifest "
                    f"({line.algorithm} {digest}, expected {line.digest})"
                )
        finally:
            os.close(fd)
        return True


class Incoming:
    """A file being written: its partial in its folder, hashed as it grows. Ends with
    :meth:`finish` (in place) or :meth:`discard` (the partial removed)."""

    def __init__(self, store: CheckpointFolder, file: WantedFile, piece_size: int) -> None:
        self.file = file
        self._store = store
        self._folder = store.folder(file.path)
        self._partial = _PARTIAL.format(file.path.name)
        self._hasher = digests.new_hasher(file.line.algorithm, piece_size=piece_size)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._partial, dir_fd=self._folder)  # left by an agent that died
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        self._fd: int | None = os.open(self._partial, flags, _FILE_MODE, dir_fd=self._folder)

    def write(self, data: memoryview) -> None:
        assert self._fd is not None
        self._hasher.update(data)
        while data:
            data = data[os.write(self._fd, data) :]

    def finish(self) -> None:
        """Check the digest, fsync, rename into place; raises :class:`Unverified` (the partial
        removed) when the bytes are not the manifest's."""
        assert self._fd is not None
        line = self.file.line
        digest = self._hasher.hexdigest()
        if digest != line.digest:
            self.discard()
            raise Unverified(
                f"{self.file.path} does not match the manifest "
                f"({line.algorithm} {digest}, expected {line.digest})"
            )
        name = self.file.path.name
        try:
            os.fsync(self._fd)
            os.rename(self._partial, name, src_dir_fd=self._folder, dst_dir_fd=self._folder)
        except BaseException:
            self.discard()
            raise
        self._store.changed(self.file.path)
        os.close(self._fd)
        self._fd = None

    def discard(self) -> None:
        """Remove the partial (nothing once finished or discarded)."""
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._partial, dir_fd=self._folder)
