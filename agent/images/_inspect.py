"""What a dump holds: its image files, INET sockets and the regular files it uses."""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from agent.images._format import (
    FD_INETSK,
    FD_REG,
    FILES_IMG,
    REMAP_GHOST,
    REMAP_IMG,
    ImageError,
    address,
    listing,
    load,
    text,
)

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
TCP_CLOSE = 7
TCP_LISTEN = 10


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


def inspect(images_dir: Path) -> ImageSummary:
    """What a dump holds: its image files, INET sockets and the regular files it uses."""
    files = listing(images_dir)
    entries = load(images_dir / FILES_IMG, "FILES")
    fd_ids = _ids_held_by_fds(files)
    ghosts = _ghost_ids(images_dir)
    sockets: list[InetSocket] = []
    regular: list[RegularFile] = []
    for entry in entries:
        if entry.type == FD_INETSK:
            sockets.append(socket_of(entry.isk, images_dir / FILES_IMG))
        elif entry.type == FD_REG:
            reg = entry.reg
            mode = reg.mode if reg.HasField("mode") else stat.S_IFREG
            if not stat.S_ISREG(mode):
                continue  # directories (cwd, root), devices
            regular.append(
                RegularFile(
                    path=reg.name,
                    size=reg.size if reg.HasField("size") else None,
                    mode=mode,
                    by_fd=entry.id in fd_ids,
                    ghost=entry.id in ghosts,
                )
            )
    return ImageSummary(
        images_dir=images_dir,
        files=tuple(ImageFile(p.name, p.stat().st_size) for p in files),
        sockets=tuple(sockets),
        regular_files=tuple(regular),
    )


def _ids_held_by_fds(files: Iterable[Path]) -> set[int]:
    ids: set[int] = set()
    for path in files:
        if path.name.startswith("fdinfo-") and path.suffix == ".img":
            ids.update(e.id for e in load(path, "FDINFO"))
    return ids


def _ghost_ids(images_dir: Path) -> set[int]:
    if not (images_dir / REMAP_IMG).is_file():
        return set()
    remaps = load(images_dir / REMAP_IMG, "REMAP_FPATH")
    return {e.orig_id for e in remaps if e.remap_type == REMAP_GHOST}


def socket_of(isk: Any, path: Path) -> InetSocket:
    """An ``InetSkEntry`` message of the image at ``path``."""
    family = _FAMILIES.get(isk.family)
    if family is None:
        raise ImageError(f"{path.name}: socket {isk.id} has family {isk.family}", path=path)
    local = Endpoint(text(address(isk.src_addr, path)), isk.src_port)
    peer_address = address(isk.dst_addr or [0], path)
    peer_port = isk.dst_port
    state = isk.state
    peer = (
        None
        if state == TCP_LISTEN or (peer_address.is_unspecified and peer_port == 0)
        else Endpoint(text(peer_address), peer_port)
    )
    return InetSocket(
        id=isk.id,
        ino=isk.ino,
        family="ipv4" if family == "ipv4" else "ipv6",
        type=_TYPES.get(isk.type, f"type-{isk.type}"),
        proto=_PROTOS.get(isk.proto, f"proto-{isk.proto}"),
        state=_STATES.get(state, f"state-{state}"),
        local=local,
        peer=peer,
    )
