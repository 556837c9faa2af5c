"""sha256 and size of files: the manifest's checksums, written by the agents that dump and
checked by those that restore."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

HASH_CHUNK = 1 << 20


class FileDigest(NamedTuple):
    path: str  # relative to the folder, with "/" separators
    size: int
    sha256: str


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(HASH_CHUNK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(view):
            digest.update(view[:n])
    return digest.hexdigest()


def sha256_files(directory: Path) -> list[FileDigest]:
    """Every regular file under ``directory`` (recursively, sorted), with size and sha256.
    FileNotFoundError if the folder does not exist."""
    if not directory.is_dir():
        raise FileNotFoundError(2, "No such folder", str(directory))
    digests = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and not p.is_symlink()):
        size = path.stat().st_size
        digests.append(FileDigest(path.relative_to(directory).as_posix(), size, sha256_file(path)))
    return digests
