"""CRIU image files as pycriu reads them: loading one image safely, writing one back in place
atomically, and the address words of socket entries."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import stat
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pycriu.images as criu_images

from crctl.errors import CrctlError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

FILES_IMG = "files.img"
INVENTORY_IMG = "inventory.img"
REMAP_IMG = "remap-fpath.img"


class ImageError(CrctlError):
    """An images folder is missing, incomplete or corrupt (``path`` names the file), or cannot
    be copied or written where asked."""

    def __init__(self, message: str, *, path: Path, errno: int | None = None) -> None:
        super().__init__(message, errno=errno)
        self.path = path

    def fields(self) -> dict[str, Any]:
        return {**super().fields(), "path": str(self.path)}


def listing(images_dir: Path) -> list[Path]:
    """The folder's files, after checking that it looks like a CRIU images folder."""
    if not images_dir.is_dir():
        raise ImageError(f"images folder {images_dir} does not exist", path=images_dir)
    if not (images_dir / INVENTORY_IMG).is_file():
        raise ImageError(
            f"{images_dir} is not a CRIU images folder (no {INVENTORY_IMG})",
            path=images_dir / INVENTORY_IMG,
        )
    if not (images_dir / FILES_IMG).is_file():
        raise ImageError(f"{FILES_IMG} is missing from {images_dir}", path=images_dir / FILES_IMG)
    return sorted(p for p in images_dir.iterdir() if p.is_file() and not p.is_symlink())


def load(path: Path, magic: str) -> list[dict[str, Any]]:
    """The entries of one image, refused unless they encode back to the very same bytes: that
    catches truncation, and anything pycriu would silently drop on a rewrite."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ImageError(
            f"cannot read {path.name}: {exc.strerror}", path=path, errno=exc.errno
        ) from exc
    try:
        image = criu_images.loads(raw)
        again = criu_images.dumps(image)
    except Exception as exc:  # pycriu raises bare Exception, struct.error, protobuf errors
        raise ImageError(
            f"{path.name} is corrupt ({type(exc).__name__}: {exc})", path=path
        ) from exc
    if image["magic"] != magic:
        raise ImageError(f"{path.name} holds {image['magic']} entries, not {magic}", path=path)
    if again != raw:
        raise ImageError(
            f"{path.name} does not encode back to the same bytes (corrupt, or written by a "
            "CRIU newer than pycriu)",
            path=path,
        )
    entries: list[dict[str, Any]] = image["entries"]
    return entries


def replace(path: Path, magic: str, entries: list[dict[str, Any]]) -> None:
    """Write a new ``path`` beside the old one and rename it into place (keeping its mode): the
    old file, which may be hard-linked into a checkpoint, is never written through."""
    try:
        data = criu_images.dumps({"magic": magic, "entries": entries})
    except Exception as exc:
        raise ImageError(
            f"cannot encode {path.name} ({type(exc).__name__}: {exc})", path=path
        ) from exc
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise ImageError(f"cannot write {path}: {exc}", path=path, errno=exc.errno) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), mode)
        os.replace(temporary, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(exc, OSError):
            raise ImageError(f"cannot write {path}: {exc}", path=path, errno=exc.errno) from exc
        raise


def address(words: Iterable[int], path: Path) -> IPAddress:
    """CRIU copies ``struct in(6)_addr`` into uint32 words: network-order bytes read as native
    integers, so packing them back natively gives the address bytes."""
    words = list(words)
    if len(words) not in (1, 4):
        raise ImageError(f"{path.name}: an address has {len(words)} words", path=path)
    return ipaddress.ip_address(b"".join(struct.pack("=I", w) for w in words))


def words(address: IPAddress) -> list[int]:
    packed = address.packed
    return [struct.unpack("=I", packed[i : i + 4])[0] for i in range(0, len(packed), 4)]


def text(address: IPAddress) -> str:
    """The usual spelling, also for IPv4-mapped IPv6 (``::ffff:192.0.2.1``, which Python < 3.13
    writes in hex)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)
