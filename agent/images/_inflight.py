"""TCP bytes in flight at a checkpoint, handed to their receiver in the working copies.

The ranks of a checkpoint stop a few milliseconds apart and each host's lock drops what
arrives for its stopped ranks, so a sender may hold bytes it sent that its peer never got:
they are in the sender's send queue, unacknowledged, and nowhere in the receiver's image.
CRIU restores them as sent and the kernel sends them again only when the restored socket's
retransmission timer fires, about a second later (a restored socket has no round-trip time to
go by): the connection stalls. When both ends are in the checkpoint, the checkpoint itself says
where those bytes belong, in the receiver's queue. So in a working copy:

* the end's receive queue gets the bytes its peer sent beyond what it had received, and its
  next expected sequence number moves past them;
* its send queue drops what its peer now has: every byte it sent, and the unsent ones its
  peer's window had room for (which the peer now has too).

Both ends do this from the two original images, so they agree, and the connection resumes with
nothing in flight. Ends whose numbers do not fit together are left as dumped."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent.images._format import FILES_IMG, REMAP_IMG, ImageError, load_with_payload
from agent.images._format import replace as replace_image
from agent.images._inspect import Endpoint, InetSocket, inspect
from crctl.connections import plain

_MAGIC = "TCP_STREAM"
_SEQ_MASK = (1 << 32) - 1


@dataclass(frozen=True)
class Queues:
    """One end of a TCP connection as dumped: its receive queue, which ends just before the next
    byte it expects (``inq_seq``), and its send queue, which ends at ``outq_seq`` and whose last
    ``unsent`` bytes were never sent; the window it offered ends at ``rcv_wup + rcv_wnd``."""

    inq_seq: int
    inq: bytes
    outq_seq: int
    outq: bytes
    unsent: int
    rcv_wup: int
    rcv_wnd: int

    @property
    def first_unacked(self) -> int:
        return (self.outq_seq - len(self.outq)) & _SEQ_MASK

    @property
    def unacked(self) -> int:
        return len(self.outq) - self.unsent


@dataclass(frozen=True)
class HandedOver:
    """What one end of a connection got and gave up."""

    local: Endpoint
    peer: Endpoint
    received: int  # bytes added to its receive queue
    dropped: int  # sent bytes it no longer holds (its peer has them now)

    def __str__(self) -> str:
        return f"{self.local} <- {self.peer}: +{self.received} B received, -{self.dropped} B sent"


def _unsent_taken(sender: Queues, receiver: Queues) -> int:
    """How many of the sender's unsent bytes fit in the window the receiver offered, after the
    bytes sent before them (what the sender's kernel would have sent next)."""
    window_end = (receiver.rcv_wup + receiver.rcv_wnd) & _SEQ_MASK
    next_to_send = (sender.first_unacked + sender.unacked) & _SEQ_MASK
    room = (window_end - next_to_send) & _SEQ_MASK
    return min(sender.unsent, room) if room <= receiver.rcv_wnd else 0


def settle(end: Queues, peer: Queues) -> Queues | None:
    """``end`` once the bytes in flight between it and ``peer`` are delivered (sent and not
    acknowledged, then unsent ones as far as the receiving end's window allows); None when the
    two do not fit together (one expects bytes the other never sent)."""
    missing_from = (end.inq_seq - peer.first_unacked) & _SEQ_MASK
    got_by_peer = (peer.inq_seq - end.first_unacked) & _SEQ_MASK
    if missing_from > peer.unacked or got_by_peer > end.unacked:
        return None
    arriving = peer.outq[missing_from : peer.unacked + _unsent_taken(peer, end)]
    leaving = _unsent_taken(end, peer)
    return replace(
        end,
        inq_seq=(end.inq_seq + len(arriving)) & _SEQ_MASK,
        inq=end.inq + arriving,
        outq=end.outq[end.unacked + leaving :],
        unsent=end.unsent - leaving,
    )


def read_for_hand_over(path: str) -> bool:
    """Whether the hand-over reads this image file of a peer rank (to find its connections and
    their queues): the others need not be checked for it."""
    name = Path(path).name
    return name in (FILES_IMG, REMAP_IMG) or name.startswith(("fdinfo-", "tcp-stream-"))


def _stream_path(images_dir: Path, sock: InetSocket) -> Path:
    return images_dir / f"tcp-stream-{sock.ino:x}.img"


def _load(path: Path) -> tuple[Any, Queues]:
    entry, payload = load_with_payload(path, _MAGIC)
    if len(payload) != entry.inq_len + entry.outq_len:
        raise ImageError(f"{path.name}: its queues are cut short", path=path)
    inq_len = entry.inq_len
    queues = Queues(
        inq_seq=entry.inq_seq,
        inq=payload[:inq_len],
        outq_seq=entry.outq_seq,
        outq=payload[inq_len:],
        unsent=entry.unsq_len if entry.HasField("unsq_len") else 0,
        rcv_wup=entry.rcv_wup,
        rcv_wnd=entry.rcv_wnd,
    )
    if queues.unacked < 0:
        raise ImageError(f"{path.name}: more unsent bytes than queued", path=path)
    return entry, queues


def _connections(images_dir: Path) -> list[InetSocket]:
    return [
        s
        for s in inspect(images_dir).sockets
        if s.proto == "tcp" and s.state == "established" and s.peer is not None
    ]


# An endpoint as the far end knows it: the address as packets carry it (a dual-stack socket's
# ::ffff:a.b.c.d is its peer's a.b.c.d), the port, and for a loopback address the host that
# dumped it (every host has its own 127.0.0.1: equal endpoints on two hosts are two ends).
_EndKey = tuple[str, int, str]
Ends = dict[tuple[_EndKey, _EndKey], tuple[Path, InetSocket]]


def _end_key(endpoint: Endpoint, host: str) -> _EndKey:
    address = plain(endpoint.address)
    return (address, endpoint.port, host if ipaddress.ip_address(address).is_loopback else "")


def connection_ends(images_dirs: Mapping[Path, str]) -> Ends:
    """Every established TCP connection end in these image folders (of one checkpoint; each
    with the host that dumped it), by its (local, peer) endpoints."""
    ends: Ends = {}
    for images_dir, host in images_dirs.items():
        for sock in _connections(images_dir):
            assert sock.peer is not None
            ends[(_end_key(sock.local, host), _end_key(sock.peer, host))] = (images_dir, sock)
    return ends


def hand_over_in_flight(working: Path, original: Path, ends: Ends) -> list[HandedOver]:
    """Deliver the bytes in flight on every connection of the rank dumped in ``original`` whose
    other end is among ``ends`` (connection_ends of the checkpoint's folders that matter:
    ``original`` among them, and its peers'), in its working copy ``working``: the tcp-stream
    images are rewritten there, the originals only read. Returns the connection ends that
    changed."""
    changed = []
    mine_here = [(key, sock) for key, (folder, sock) in ends.items() if folder == original]
    for (local, peer), sock in mine_here:
        assert sock.peer is not None
        other = ends.get((peer, local))
        if other is None:
            continue  # a peer outside the checkpoint
        entry, mine = _load(_stream_path(original, sock))
        _, theirs = _load(_stream_path(*other))
        settled = settle(mine, theirs)
        if settled is None or settled == mine:
            continue
        entry.inq_len = len(settled.inq)
        entry.inq_seq = settled.inq_seq
        entry.outq_len = len(settled.outq)
        if entry.HasField("unsq_len"):
            entry.unsq_len = settled.unsent
        replace_image(
            _stream_path(working, sock), _MAGIC, [entry], payload=settled.inq + settled.outq
        )
        changed.append(
            HandedOver(
                local=sock.local,
                peer=sock.peer,
                received=len(settled.inq) - len(mine.inq),
                dropped=len(mine.outq) - len(settled.outq),
            )
        )
    return changed
