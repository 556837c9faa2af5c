"""Reading and rewriting CRIU image folders, with no CRIU process: what a checkpoint holds
(INET sockets, regular files, image files), a working copy whose sockets carry new addresses
(restart on other hosts), and sha256 manifests.

Besides :mod:`agent.criu`, this is the only module that imports pycriu.

What CRIU 4.x writes, as found on CRIU 4.1.1 and 4.2.1:

* ``files.img`` holds every file the tasks use as ``FileEntry{type, id, <one sub-message>}``.
  Sockets are ``type: INETSK`` with ``isk: InetSkEntry``: ``family`` (2 / 10), ``type``,
  ``proto``, ``state`` (the kernel's TCP state numbers; 10 is listen), ``src_port`` /
  ``dst_port`` and ``src_addr`` / ``dst_addr``: lists of uint32 words holding the address bytes
  in network order, in host byte order words (one word for IPv4, four for IPv6).
* Regular files are ``type: REG`` with ``reg: RegFileEntry``: ``name`` (the path), ``mode``
  (the whole ``st_mode``) and ``size``: ``st_size`` at dump time, recorded for every regular
  file except those opened ``O_WRONLY | O_APPEND`` (log files). A restore refuses a file whose
  size or mode differs (and, for ELF files, whose build id differs). Mapped files (the
  executable, libraries), the cwd and root directories and devices are ``REG`` entries too.
* ``fdinfo-<n>.img`` maps the tasks' descriptors to file ids; ``remap-fpath.img`` marks files
  that were deleted while open (``GHOST``: their contents are in the images).
* ``tcp-stream-<ino>.img`` holds sequence numbers, windows and queued data: no addresses.
  Tasks in the host's network namespace have no ``netdev`` / ``ifaddr`` / ``route`` images,
  so the socket entries in ``files.img`` are the only addresses to rewrite.
"""

from __future__ import annotations

import errno as errno_codes
import hashlib
import ipaddress
import os
import shutil
import stat
import struct
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

import pycriu.images as criu_images
import structlog

from crctl.errors import CrctlError

log = structlog.get_logger()

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

FILES_IMG = "files.img"
INVENTORY_IMG = "inventory.img"
REMAP_IMG = "remap-fpath.img"
# Unmodified image files at least this big are hard-linked into a working copy (pages-*.img
# can be GiBs; a copy runs at about 0.3 GB/s here). Smaller ones are copied: it costs nothing
# and keeps the copy independent of the source wherever that is cheap.
LINK_MIN_BYTES = 1 << 20
HASH_CHUNK = 1 << 20

_FAMILIES = {2: "ipv4", 10: "ipv6"}
_TYPES = {1: "stream", 2: "dgram", 3: "raw", 5: "seqpacket"}
_PROTOS = {0: "ip", 1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 136: "udplite"}
_STATES = {
    1: "established",
    2: "syn-sent",
    3: "syn-recv",
    4: "fin-wait1",
    5: "fin-wait2",
    6: "time-wait",
    7: "close",
    8: "close-wait",
    9: "last-ack",
    10: "listen",
    11: "closing",
}
_TCP_LISTEN = 10


class ImageError(CrctlError):
    """An images folder is missing, incomplete or corrupt (``path`` names the file), or cannot
    be copied where asked."""

    def __init__(self, message: str, *, path: Path, errno: int | None = None) -> None:
        super().__init__(message, errno=errno)
        self.path = path

    def fields(self) -> dict[str, Any]:
        return {**super().fields(), "path": str(self.path)}


class AddressMapError(CrctlError):
    """An old -> new address map is malformed: not addresses, mixed IPv4/IPv6, or wildcards."""


@dataclass(frozen=True)
class Endpoint:
    address: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class InetSocket:
    """One INET socket as dumped. ``peer`` is None for a socket with no peer (listening, or
    bound and unconnected)."""

    id: int  # the file id in files.img
    ino: int  # the socket inode at dump time (names tcp-stream-<ino in hex>.img)
    family: Literal["ipv4", "ipv6"]
    type: str  # stream, dgram, raw, ...
    proto: str  # tcp, udp, ...
    state: str  # established, listen, close, ... (the kernel's TCP state names)
    local: Endpoint
    peer: Endpoint | None


@dataclass(frozen=True)
class RegularFile:
    """A regular file the tasks use, as recorded. ``size`` is None when CRIU recorded none (a
    file opened O_WRONLY|O_APPEND): the restore then does not check it. ``ghost``: the file was
    deleted while open and its contents are in the images, so the path need not exist."""

    path: str
    size: int | None
    mode: int
    by_fd: bool  # held by a descriptor (else mapped, e.g. the executable or a library)
    ghost: bool


@dataclass(frozen=True)
class ImageFile:
    name: str
    size: int


@dataclass(frozen=True)
class ImageSummary:
    images_dir: Path
    files: tuple[ImageFile, ...]
    sockets: tuple[InetSocket, ...]
    regular_files: tuple[RegularFile, ...]

    @property
    def tcp_listen_ports(self) -> tuple[int, ...]:
        return tuple(
            sorted({s.local.port for s in self.sockets if s.proto == "tcp" and s.state == "listen"})
        )

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class RewriteReport:
    source: Path
    target: Path
    # (old, new) -> how many endpoints (a socket's local or peer address) were rewritten.
    endpoints: Mapping[tuple[str, str], int]
    sockets: int  # sockets with at least one endpoint rewritten
    linked: tuple[str, ...]  # unmodified files hard-linked from the source
    copied: tuple[str, ...]  # unmodified files copied
    seconds: float


class FileDigest(NamedTuple):
    path: str  # relative to the images folder, with "/" separators
    size: int
    sha256: str


@dataclass(frozen=True)
class Problem:
    path: str
    kind: Literal["missing", "size", "sha256", "mode", "not-regular", "extra"]
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"


# -- reading ------------------------------------------------------------------------------


def inspect(images_dir: Path) -> ImageSummary:
    """What a dump holds: its image files, INET sockets and the regular files it uses."""
    listing = _listing(images_dir)
    entries = _load(images_dir / FILES_IMG, "FILES")
    fd_ids = _ids_held_by_fds(listing)
    ghosts = _ghost_ids(images_dir)
    sockets: list[InetSocket] = []
    regular: list[RegularFile] = []
    for entry in entries:
        if entry.get("type") == "INETSK":
            sockets.append(_socket(entry["isk"], images_dir / FILES_IMG))
        elif entry.get("type") == "REG":
            reg = entry["reg"]
            mode = int(reg.get("mode", stat.S_IFREG))
            if not stat.S_ISREG(mode):
                continue  # directories (cwd, root), devices
            regular.append(
                RegularFile(
                    path=str(reg["name"]),
                    size=int(reg["size"]) if "size" in reg else None,
                    mode=mode,
                    by_fd=int(entry["id"]) in fd_ids,
                    ghost=int(entry["id"]) in ghosts,
                )
            )
    return ImageSummary(
        images_dir=images_dir,
        files=tuple(ImageFile(p.name, p.stat().st_size) for p in listing),
        sockets=tuple(sockets),
        regular_files=tuple(regular),
    )


def _listing(images_dir: Path) -> list[Path]:
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


def _load(path: Path, magic: str) -> list[dict[str, Any]]:
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


def _ids_held_by_fds(listing: Iterable[Path]) -> set[int]:
    ids: set[int] = set()
    for path in listing:
        if path.name.startswith("fdinfo-") and path.suffix == ".img":
            ids.update(int(e["id"]) for e in _load(path, "FDINFO"))
    return ids


def _ghost_ids(images_dir: Path) -> set[int]:
    if not (images_dir / REMAP_IMG).is_file():
        return set()
    return {
        int(e["orig_id"])
        for e in _load(images_dir / REMAP_IMG, "REMAP_FPATH")
        if e.get("remap_type", "LINKED") == "GHOST"
    }


def _socket(isk: Mapping[str, Any], path: Path) -> InetSocket:
    family = _FAMILIES.get(int(isk["family"]))
    if family is None:
        raise ImageError(f"{path.name}: socket {isk['id']} has family {isk['family']}", path=path)
    local = Endpoint(_text(_address(isk["src_addr"], path)), int(isk.get("src_port", 0)))
    peer_address = _address(isk.get("dst_addr", []) or [0], path)
    peer_port = int(isk.get("dst_port", 0))
    state = int(isk["state"])
    peer = (
        None
        if state == _TCP_LISTEN or (peer_address.is_unspecified and peer_port == 0)
        else Endpoint(_text(peer_address), peer_port)
    )
    return InetSocket(
        id=int(isk["id"]),
        ino=int(isk["ino"]),
        family="ipv4" if family == "ipv4" else "ipv6",
        type=_TYPES.get(int(isk["type"]), f"type-{isk['type']}"),
        proto=_PROTOS.get(int(isk["proto"]), f"proto-{isk['proto']}"),
        state=_STATES.get(state, f"state-{state}"),
        local=local,
        peer=peer,
    )


def _address(words: Iterable[int], path: Path) -> IPAddress:
    """CRIU copies ``struct in(6)_addr`` into uint32 words: network-order bytes read as native
    integers, so packing them back natively gives the address bytes."""
    words = list(words)
    if len(words) not in (1, 4):
        raise ImageError(f"{path.name}: an address has {len(words)} words", path=path)
    return ipaddress.ip_address(b"".join(struct.pack("=I", w) for w in words))


def _text(address: IPAddress) -> str:
    """The usual spelling, also for IPv4-mapped IPv6 (``::ffff:192.0.2.1``, which Python < 3.13
    writes in hex)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def _words(address: IPAddress) -> list[int]:
    packed = address.packed
    return [struct.unpack("=I", packed[i : i + 4])[0] for i in range(0, len(packed), 4)]


# -- rewriting ----------------------------------------------------------------------------


def rewrite_endpoints(
    source: Path,
    target: Path,
    address_map: Mapping[str, str],
    *,
    link_unmodified: bool = True,
) -> RewriteReport:
    """Make ``target``, a working copy of the images in ``source`` whose INET sockets have
    every local and peer address found in ``address_map`` (old -> new) replaced; addresses not
    in the map are left alone. An IPv4 entry also maps its IPv4-mapped IPv6 form
    (``::ffff:a.b.c.d``, held by dual-stack sockets).

    ``source`` is never modified: ``files.img`` is written anew, and other files are copied,
    or hard-linked when big and ``link_unmodified`` (so a caller must not modify the copy's
    other files in place, e.g. restore with CRIU's auto-dedup).

    ``target`` must not exist; it appears complete or not at all."""
    started = time.monotonic()
    mapping = _parse_map(address_map)
    listing = _listing(source)
    if target.exists() or target.is_symlink():
        raise ImageError(f"target {target} already exists", path=target)
    files_img = source / FILES_IMG
    entries = _load(files_img, "FILES")
    counts: Counter[tuple[str, str]] = Counter()
    sockets = 0
    for entry in entries:
        if entry.get("type") != "INETSK":
            continue
        isk = entry["isk"]
        touched = False
        for key in ("src_addr", "dst_addr"):
            if not isk.get(key):
                continue
            old = _address(isk[key], files_img)
            new = mapping.get(old)
            if new is None:
                continue
            isk[key] = _words(new)
            counts[(_text(old), _text(new))] += 1
            touched = True
        sockets += touched
    new_files_img = criu_images.dumps({"magic": "FILES", "entries": entries})

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    except OSError as exc:
        raise ImageError(f"cannot make {target}: {exc}", path=target, errno=exc.errno) from exc
    os.chmod(partial, stat.S_IMODE(source.stat().st_mode))
    linked: list[str] = []
    copied: list[str] = []
    try:
        for path in listing:
            dest = partial / path.name
            if path.name == FILES_IMG:
                dest.write_bytes(new_files_img)
                shutil.copymode(path, dest)
            elif link_unmodified and path.stat().st_size >= LINK_MIN_BYTES and _link(path, dest):
                linked.append(path.name)
            else:
                _copy(path, dest)
                copied.append(path.name)
        os.rename(partial, target)
    except BaseException as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(exc, OSError):
            raise ImageError(
                f"cannot make {target} from {source}: {exc}", path=target, errno=exc.errno
            ) from exc
        raise
    report = RewriteReport(
        source=source,
        target=target,
        endpoints=MappingProxyType(dict(counts)),
        sockets=sockets,
        linked=tuple(linked),
        copied=tuple(copied),
        seconds=time.monotonic() - started,
    )
    log.info(
        "images_rewritten",
        source=str(source),
        target=str(target),
        endpoints={f"{old}->{new}": n for (old, new), n in counts.items()},
        sockets=sockets,
        linked=len(linked),
        copied=len(copied),
        seconds=round(report.seconds, 3),
    )
    return report


def _parse_map(address_map: Mapping[str, str]) -> dict[IPAddress, IPAddress]:
    mapping: dict[IPAddress, IPAddress] = {}
    for old_text, new_text in address_map.items():
        try:
            old = ipaddress.ip_address(old_text)
            new = ipaddress.ip_address(new_text)
        except ValueError as exc:
            raise AddressMapError(f"address map {old_text!r} -> {new_text!r}: {exc}") from exc
        if old.version != new.version:
            raise AddressMapError(
                f"address map {old} -> {new}: an IPv{old.version} address cannot become "
                f"IPv{new.version} (the socket's family would change)"
            )
        if old.is_unspecified or new.is_unspecified:
            raise AddressMapError(f"address map {old} -> {new}: wildcard addresses cannot map")
        if old in mapping and mapping[old] != new:
            raise AddressMapError(f"address map: {old} maps to both {mapping[old]} and {new}")
        mapping[old] = new
    # A dual-stack IPv6 socket talking to an IPv4 host holds ::ffff:a.b.c.d: the same host.
    for old, new in list(mapping.items()):
        if isinstance(old, ipaddress.IPv4Address) and isinstance(new, ipaddress.IPv4Address):
            mapping.setdefault(
                ipaddress.IPv6Address(f"::ffff:{old}"), ipaddress.IPv6Address(f"::ffff:{new}")
            )
    return mapping


def _link(source: Path, dest: Path) -> bool:
    try:
        os.link(source, dest)
    except OSError as exc:
        if exc.errno not in (errno_codes.EXDEV, errno_codes.EPERM, errno_codes.EMLINK):
            raise
        log.info("images_link_refused", path=str(source), reason=exc.strerror)
        return False
    return True


def _copy(source: Path, dest: Path) -> None:
    shutil.copyfile(source, dest)
    shutil.copymode(source, dest)


# -- manifests ----------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(HASH_CHUNK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(view):
            digest.update(view[:n])
    return digest.hexdigest()


def sha256_files(images_dir: Path) -> list[FileDigest]:
    """Every regular file under ``images_dir`` (recursively, sorted), with size and sha256."""
    if not images_dir.is_dir():
        raise ImageError(f"images folder {images_dir} does not exist", path=images_dir)
    digests = []
    for path in sorted(p for p in images_dir.rglob("*") if p.is_file() and not p.is_symlink()):
        size = path.stat().st_size
        digests.append(FileDigest(path.relative_to(images_dir).as_posix(), size, sha256_file(path)))
    return digests


def verify(
    images_dir: Path,
    expected: Iterable[FileDigest | tuple[str, int, str]],
    *,
    allow_extra: bool = True,
) -> list[Problem]:
    """What differs from a manifest: missing files, wrong sizes (not hashed), wrong sha256,
    and, unless ``allow_extra`` (logs written next to the images), files not in it."""
    problems: list[Problem] = []
    listed: set[str] = set()
    for rel, size, sha256 in expected:
        listed.add(rel)
        path = images_dir / rel
        if not path.is_file():
            problems.append(Problem(rel, "missing", "missing"))
            continue
        actual = path.stat().st_size
        if actual != size:
            problems.append(Problem(rel, "size", f"size {actual}, expected {size}"))
            continue
        digest = sha256_file(path)
        if digest != sha256:
            problems.append(Problem(rel, "sha256", f"sha256 {digest}, expected {sha256}"))
    if not allow_extra and images_dir.is_dir():
        for path in sorted(images_dir.rglob("*")):
            rel = path.relative_to(images_dir).as_posix()
            if path.is_file() and rel not in listed:
                problems.append(Problem(rel, "extra", "not in the manifest"))
    return problems


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
