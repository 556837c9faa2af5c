"""File digests for checkpoint manifests, and checks of a folder against them: the one place
that hashes checkpoint images, for the agents (manifests at a checkpoint, verification before a
restart) and for the coordinator (``crctl verify``).

New manifests use BLAKE3: several times faster than sha256 on one core, and a large file is
hashed with BLAKE3's own threads. A manifest written before the digests named their algorithm
holds only each file's sha256; it still verifies, with sha256.

Files are read through a mapping of them: no copy into a buffer (a third less time than reading
on page images). Checkpoint images are never truncated in place (retention unlinks them, which
a mapping survives). Bytes that arrive in pieces (images fetched from another host) are hashed
as they come by the incremental hasher of :func:`new_hasher`."""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal, NamedTuple, Protocol

import blake3

from crctl.errors import CrctlError
from crctl.v1 import control_pb2

__all__ = [
    "DEFAULT_ALGORITHM",
    "THREADED_FROM_BYTES",
    "Algorithm",
    "FileDigest",
    "Hasher",
    "Problem",
    "digest_fd",
    "digest_file",
    "digest_files",
    "new_hasher",
    "verify",
]


class Algorithm(StrEnum):
    BLAKE3 = "blake3"
    SHA256 = "sha256"  # manifests written before BLAKE3


DEFAULT_ALGORITHM = Algorithm.BLAKE3

# From this size on a file is hashed with BLAKE3's threads (its shared pool, one per core).
# Measured on 2 cores: waking the pool costs 0.05-0.1 ms, half of a 1 MiB file's hash; a 4 MiB
# file's hash (0.4 ms on one thread) takes a third less when a second core is free, and 64 MiB
# half (8.4 -> 4.4 ms). Checkpoint images are either far smaller (a few KiB) or far larger
# (page images, MiBs to GiBs), so the exact size matters little.
THREADED_FROM_BYTES = 4 << 20

_TO_PROTO = {
    Algorithm.BLAKE3: control_pb2.DIGEST_ALGORITHM_BLAKE3,
    Algorithm.SHA256: control_pb2.DIGEST_ALGORITHM_SHA256,
}
_FROM_PROTO = {number: algorithm for algorithm, number in _TO_PROTO.items()}


class FileDigest(NamedTuple):
    path: str  # relative to the folder it was listed in, with "/" separators
    size: int
    digest: str  # lowercase hex
    algorithm: Algorithm = DEFAULT_ALGORITHM

    def to_proto(self, *, prefix: str = "") -> control_pb2.FileDigest:
        """The manifest's line, its path under ``prefix`` (e.g. ``rank-0/``)."""
        return control_pb2.FileDigest(
            path=prefix + self.path,
            size=self.size,
            algorithm=_TO_PROTO[self.algorithm],
            digest=self.digest,
        )

    @classmethod
    def from_proto(cls, line: control_pb2.FileDigest, *, strip: str = "") -> FileDigest:
        """A manifest's line, its path without the prefix ``strip``. A line of an old manifest
        (no algorithm) is its sha256; a line with no digest at all never verifies."""
        path = line.path.removeprefix(strip)
        if line.algorithm == control_pb2.DIGEST_ALGORITHM_UNSPECIFIED:
            return cls(path, line.size, line.sha256, Algorithm.SHA256)
        algorithm = _FROM_PROTO.get(line.algorithm)
        if algorithm is None:
            raise CrctlError(
                f"{line.path}: the manifest names digest algorithm {line.algorithm}, "
                "which this version of crctl does not know"
            )
        return cls(path, line.size, line.digest, algorithm)


@dataclass(frozen=True)
class Problem:
    """What differs between a file and what was recorded of it."""

    path: str
    # Not damage: "unreachable", no live host holding a node-local copy could be asked;
    # "copy", this copy differs but another one of the same images is intact.
    kind: Literal[
        "missing", "size", "digest", "extra", "mode", "not-regular", "unreachable", "copy"
    ]
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"


class Hasher(Protocol):
    """A digest computed piece by piece: ``update`` with each piece in order, then
    ``hexdigest`` (lowercase hex)."""

    def update(self, data: bytes | bytearray | memoryview | mmap.mmap, /) -> object: ...
    def hexdigest(self) -> str: ...


def new_hasher(algorithm: Algorithm = DEFAULT_ALGORITHM, *, piece_size: int = 0) -> Hasher:
    """An incremental hasher. ``piece_size``: how large the pieces it is given are; from
    ``THREADED_FROM_BYTES`` on, BLAKE3 hashes each piece with its threads (smaller pieces hash
    faster on one)."""
    if algorithm == Algorithm.SHA256:
        return hashlib.sha256()
    threads = blake3.blake3.AUTO if piece_size >= THREADED_FROM_BYTES else 1
    return blake3.blake3(max_threads=threads)


def digest_fd(fd: int, algorithm: Algorithm = DEFAULT_ALGORITHM) -> str:
    """The digest, in lowercase hex, of the whole file open at ``fd`` (which stays open)."""
    size = os.fstat(fd).st_size
    hasher = new_hasher(algorithm, piece_size=size)
    if size:  # an empty file cannot be mapped
        with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as mapped:
            hasher.update(mapped)
    return hasher.hexdigest()


def digest_file(path: Path, algorithm: Algorithm = DEFAULT_ALGORITHM) -> str:
    """The file's digest in lowercase hex."""
    with path.open("rb", buffering=0) as f:
        return digest_fd(f.fileno(), algorithm)


def digest_files(folder: Path, algorithm: Algorithm = DEFAULT_ALGORITHM) -> list[FileDigest]:
    """Every regular file under ``folder`` (recursively, sorted), with its size and digest."""
    if not folder.is_dir():
        raise CrctlError(f"images folder {folder} does not exist")
    return [
        FileDigest(
            path.relative_to(folder).as_posix(),
            path.stat().st_size,
            digest_file(path, algorithm),
            algorithm,
        )
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    ]


def verify(
    folder: Path, expected: Iterable[FileDigest], *, allow_extra: bool = True
) -> list[Problem]:
    """What differs from a manifest: missing files, wrong sizes (not hashed), wrong digests
    (each computed by the algorithm its line names), and, unless ``allow_extra`` (logs written
    next to the images), files not in it."""
    problems: list[Problem] = []
    listed: set[str] = set()
    for line in expected:
        listed.add(line.path)
        path = folder / line.path
        if not path.is_file():
            problems.append(Problem(line.path, "missing", "missing"))
            continue
        actual = path.stat().st_size
        if actual != line.size:
            problems.append(Problem(line.path, "size", f"size {actual}, expected {line.size}"))
            continue
        if not line.digest:
            problems.append(Problem(line.path, "digest", "the manifest records no digest"))
            continue
        digest = digest_file(path, line.algorithm)
        if digest != line.digest:
            detail = f"{line.algorithm} {digest}, expected {line.digest}"
            problems.append(Problem(line.path, "digest", detail))
    if not allow_extra and folder.is_dir():
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            if path.is_file() and rel not in listed:
                problems.append(Problem(rel, "extra", "not in the manifest"))
    return problems
