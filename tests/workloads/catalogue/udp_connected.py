"""udp_connected (2 ranks): ping-pong over connected UDP sockets (rank 0 on A0:P, rank 1 on
A1:P+1, each connect()ed to the other), with resends.

Covers: connected UDP sockets (CRIU rewrites a connected socket's peer; an unconnected
sendto would use the stale argv address). Rank 1 sends ping (seq, attempt) and resends it
with attempt + 1 if no pong comes within RESEND_TICKS ticks; rank 0 answers each ping with a
pong of the same (seq, attempt). Loss is tolerated (UDP), and so is a refused send while the
peer is not there (ECONNREFUSED from an ICMP error). Errors: a corrupted datagram, the same
(seq, attempt) arriving twice, a seq from the future, or one older than REORDER_WINDOW.
Progress: pongs matched (rank 1), pings answered (rank 0)."""

from __future__ import annotations

import contextlib
import socket
import struct

from tests.workloads.catalogue import _common

DATAGRAM = struct.Struct("!4sQI")  # kind, seq, attempt; then the body of message `seq`
RESEND_TICKS = 100  # ~0.5 s of running at ~5 ms a tick
REORDER_WINDOW = 8


def datagram(kind: bytes, seq: int, attempt: int) -> bytes:
    return DATAGRAM.pack(kind, seq, attempt) + _common.make_message(kind, seq, max_size=1000)


class Matcher:
    """Which (seq, attempt) of `kind` have been seen, for one side: its verdict on each
    datagram is None (fine: count it), or what is wrong with it."""

    def __init__(self, kind: bytes) -> None:
        self.kind = kind
        self.highest = -1
        self.seen: set[tuple[int, int]] = set()

    def check(self, data: bytes, newest_allowed: int | None = None) -> str | None:
        if len(data) < DATAGRAM.size:
            return f"a {len(data)}-byte datagram, shorter than its header"
        kind, seq, attempt = DATAGRAM.unpack_from(data)
        if kind != self.kind:
            return f"a datagram of kind {kind!r}, expected {self.kind!r}"
        problem = _common.check_message(data[DATAGRAM.size :], self.kind, seq, max_size=1000)
        if problem:
            return problem
        if newest_allowed is not None and seq > newest_allowed:
            return f"{self.kind.decode()} {seq} is newer than anything sent ({newest_allowed})"
        if seq < self.highest - REORDER_WINDOW:
            return f"{self.kind.decode()} {seq} arrived after {self.highest}: reordered"
        if (seq, attempt) in self.seen:
            return f"{self.kind.decode()} {seq} attempt {attempt} arrived twice"
        self.seen.add((seq, attempt))
        self.highest = max(self.highest, seq)
        self.seen = {key for key in self.seen if key[0] >= self.highest - REORDER_WINDOW}
        return None


def answer_pings(sock: socket.socket, status: _common.Status) -> None:
    pings = Matcher(b"ping")
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionRefusedError:
            continue
        problem = pings.check(data)
        if problem:
            status.error(problem)
            continue
        _, seq, attempt = DATAGRAM.unpack_from(data)
        try:
            sock.send(datagram(b"pong", seq, attempt))
        except ConnectionRefusedError:
            continue
        status.ok()


def send_pings(sock: socket.socket, status: _common.Status) -> None:
    pongs = Matcher(b"pong")
    sock.settimeout(0.005)
    seq = attempt = 0
    while True:
        with contextlib.suppress(ConnectionRefusedError):
            sock.send(datagram(b"ping", seq, attempt))
        for _ in range(RESEND_TICKS):
            try:
                data = sock.recv(65536)
            except (TimeoutError, ConnectionRefusedError):
                continue
            problem = pongs.check(data, newest_allowed=seq)
            if problem:
                status.error(problem)
                continue
            if DATAGRAM.unpack_from(data)[1] == seq:
                status.ok()
                seq, attempt = seq + 1, 0
                break
        else:
            attempt += 1
        _common.pause(0.005)


def main() -> None:
    args, status = _common.start("udp_connected", ranks=2)
    peer = 1 - args.rank
    family = socket.AF_INET6 if ":" in args.own_address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((args.own_address, args.listen_port(args.rank)))
    sock.connect((args.addresses[peer], args.listen_port(peer)))
    (answer_pings if args.rank == 0 else send_pings)(sock, status)


if __name__ == "__main__":
    main()
