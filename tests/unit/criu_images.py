"""CRIU image folders made by hand, in the format CRIU 4.x writes (agent.images' doc): an
inventory, a ``files.img`` of INET sockets and their ``tcp-stream-<ino>.img``, encoded by
pycriu's own protobuf classes, so that agent.images reads them as it reads a real dump."""

from __future__ import annotations

import ipaddress
import itertools
from dataclasses import dataclass
from pathlib import Path

from pycriu.images import pb

from agent.images._format import FD_INETSK, replace, words

_ids = itertools.count(1)


@dataclass(frozen=True)
class Stream:
    """A connection end's queues: bytes it sent that are not acknowledged, from ``first_unacked``;
    the next byte it expects; the window it offered from there."""

    first_unacked: int
    sent: bytes = b""
    expects: int = 0
    window: int = 65536


@dataclass(frozen=True)
class Socket:
    local: tuple[str, int]
    peer: tuple[str, int] | None = None  # None: listening
    stream: Stream | None = None  # a connection's queues (none in flight by default)

    @property
    def ino(self) -> int:
        return 0x1000 + self.local[1] * 7 + (self.peer[1] if self.peer else 0)


def write_images(folder: Path, sockets: list[Socket]) -> Path:
    folder.mkdir(parents=True)
    for name in ("inventory.img", "files.img"):
        (folder / name).touch()
    replace(folder / "inventory.img", "INVENTORY", [pb.inventory_entry(img_version=2)])
    entries = []
    for sock in sockets:
        local = ipaddress.ip_address(sock.local[0])
        peer = ipaddress.ip_address(sock.peer[0]) if sock.peer else None
        isk = pb.inet_sk_entry(
            id=next(_ids),
            ino=sock.ino,
            family=10 if local.version == 6 else 2,
            type=1,
            proto=6,
            state=10 if peer is None else 1,  # listen | established
            src_port=sock.local[1],
            dst_port=sock.peer[1] if sock.peer else 0,
            flags=0,
            backlog=0,
            src_addr=words(local),
            dst_addr=words(peer if peer is not None else type(local)(0)),
            fown=pb.fown_entry(uid=0, euid=0, signum=0, pid_type=0, pid=0),
            opts=pb.sk_opts_entry(
                so_sndbuf=0,
                so_rcvbuf=0,
                so_snd_tmo_sec=0,
                so_snd_tmo_usec=0,
                so_rcv_tmo_sec=0,
                so_rcv_tmo_usec=0,
            ),
        )
        entries.append(pb.file_entry(type=FD_INETSK, id=isk.id, isk=isk))
        if sock.peer is not None:  # nothing in flight unless told
            stream = sock.stream or Stream(first_unacked=1, expects=1)
            _write_stream(folder / f"tcp-stream-{sock.ino:x}.img", stream)
    replace(folder / "files.img", "FILES", entries)
    return folder


def _write_stream(path: Path, stream: Stream) -> None:
    path.touch()
    entry = pb.tcp_stream_entry(
        inq_len=0,
        inq_seq=stream.expects,
        outq_len=len(stream.sent),
        outq_seq=(stream.first_unacked + len(stream.sent)) & 0xFFFFFFFF,
        opt_mask=0,
        snd_wscale=0,
        mss_clamp=1460,
        unsq_len=0,
        rcv_wup=stream.expects,
        rcv_wnd=stream.window,
    )
    replace(path, "TCP_STREAM", [entry], payload=stream.sent)
