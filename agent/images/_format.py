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
from pycriu.images import magic as criu_magic
from pycriu.images import pb as criu_pb

from crctl.errors import CrctlError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_WORD = struct.Struct("=i")  # CRIU writes magics and entry sizes as native 32-bit words
_MAGICS: dict[str, int] = dict(criu_magic.by_name)
_NAMES: dict[int, str] = dict(criu_magic.by_val)
_CONTAINER_MAGICS = {_MAGICS["IMG_COMMON"], _MAGICS["IMG_SERVICE"]}


def _enum(message: Any, field: str, name: str) -> int:
    number: int = message.DESCRIPTOR.fields_by_name[field].enum_type.values_by_name[name].number
    return number


FD_INETSK = _enum(criu_pb.file_entry, "type", "INETSK")
FD_REG = _enum(criu_pb.file_entry, "type", "REG")
REMAP_GHOST = _enum(criu_pb.remap_file_path_entry, "remap_type", "GHOST")
SHUTDOWN_BOTH = _enum(criu_pb.inet_sk_entry, "shutdown", "BOTH")


def _header(magic: str) -> tuple[int, ...]:
    """The magic words CRIU starts a ``magic`` image with: the inventory has only its own,
    service images follow the service magic, all others the common one."""
    if magic == "INVENTORY":
        return (_MAGICS[magic],)
    container = "IMG_SERVICE" if magic in ("STATS", "IRMAP_CACHE") else "IMG_COMMON"
    return (_MAGICS[container], _MAGICS[magic])


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


def _payload(magic: str, path: Path) -> Any:
    """pycriu's protobuf class for the entries of a ``magic`` image with no extra payload."""
    handler = criu_images.handlers.get(magic)
    if handler is None or handler.extra_handler is not None:
        raise ImageError(f"{path.name}: {magic} images are not read here", path=path)
    return handler.payload


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageError(
            f"cannot read {path.name}: {exc.strerror}", path=path, errno=exc.errno
        ) from exc


def load(path: Path, magic: str) -> list[Any]:
    """The entries of one image as protobuf messages, refused unless they encode back to the
    very same bytes: that catches truncation, and fields pycriu's protobuf would drop on a
    rewrite."""
    raw = _read(path)
    payload = _payload(magic, path)
    try:
        header, entries = _split(raw, path)
        if header != _header(magic):
            found = _NAMES.get(header[-1], hex(header[-1]))
            raise ImageError(f"{path.name} holds {found} entries, not {magic}", path=path)
        messages = [payload.FromString(body) for body in entries]
    except ImageError:
        raise
    except Exception as exc:  # struct.error, protobuf's DecodeError
        raise ImageError(
            f"{path.name} is corrupt ({type(exc).__name__}: {exc})", path=path
        ) from exc
    if _encode(header, messages) != raw:
        raise ImageError(
            f"{path.name} does not encode back to the same bytes (corrupt, or written by a "
            "CRIU newer than pycriu)",
            path=path,
        )
    return messages


def load_with_payload(path: Path, magic: str) -> tuple[Any, bytes]:
    """The one entry of a ``magic`` image that carries raw bytes after it (``TCP_STREAM``: the
    socket's receive then send queue), and those bytes."""
    raw = _read(path)
    handler = criu_images.handlers.get(magic)
    header = _header(magic)
    offset = _WORD.size * len(header)
    try:
        found = tuple(_WORD.unpack_from(raw, i * _WORD.size)[0] for i in range(len(header)))
        (size,) = _WORD.unpack_from(raw, offset)
        if found != header or handler is None:
            raise ImageError(f"{path.name} is not a {magic} image", path=path)
        body = raw[offset + _WORD.size : offset + _WORD.size + size]
        if size < 0 or len(body) != size:
            raise ImageError(f"{path.name} is truncated", path=path)
        message = handler.payload.FromString(body)
    except ImageError:
        raise
    except Exception as exc:  # struct.error, protobuf's DecodeError
        raise ImageError(
            f"{path.name} is corrupt ({type(exc).__name__}: {exc})", path=path
        ) from exc
    if message.SerializeToString() != body:
        raise ImageError(f"{path.name} does not encode back to the same bytes", path=path)
    return message, raw[offset + _WORD.size + size :]


def _split(raw: bytes, path: Path) -> tuple[tuple[int, ...], list[bytes]]:
    """An image's magic words (the common or service magic first, when present, then the
    image's own) and its entries' bytes: each entry is a 32-bit size and that many bytes."""
    (first,) = _WORD.unpack_from(raw, 0)
    header: tuple[int, ...] = (first,)
    offset = _WORD.size
    if first in _CONTAINER_MAGICS:
        header = (first, _WORD.unpack_from(raw, offset)[0])
        offset += _WORD.size
    entries = []
    while offset < len(raw):
        (size,) = _WORD.unpack_from(raw, offset)
        offset += _WORD.size
        if size < 0 or offset + size > len(raw):
            raise ImageError(f"{path.name} is truncated", path=path)
        entries.append(raw[offset : offset + size])
        offset += size
    return header, entries


def _encode(header: tuple[int, ...], messages: Iterable[Any]) -> bytes:
    parts = [_WORD.pack(word) for word in header]
    for message in messages:
        body = message.SerializeToString()
        parts.append(_WORD.pack(len(body)))
        parts.append(body)
    return b"".join(parts)


def replace(path: Path, magic: str, entries: list[Any], payload: bytes = b"") -> None:
    """Write a new ``path`` beside the old one and rename it into place (keeping its mode): the
    old file, which may be hard-linked into a checkpoint, is never written through.
    ``payload``: the raw bytes some images carry after their entry (load_with_payload)."""
    header = _header(magic)
    try:
        data = _encode(header, entries) + payload
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
