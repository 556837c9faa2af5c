"""unix_dgram: SOCK_DGRAM Unix sockets bound to paths in the work dir: a child's socket,
connected to the rank's, sends bursts of datagrams that wait unread in the rank's queue
until the rank reads them all and acknowledges the burst with a datagram to the child's path.

Covers: Unix datagram sockets (CRIU restores path-bound datagram sockets, a connected one,
and the datagrams queued unread on a socket). Each burst is BURST datagrams (under the
default queue length of 10), each a message (_common.make_message) of its own length; the
rank lets a burst sit in its queue for HOLD seconds, then reads it and checks every datagram
(Unix datagrams are neither lost nor reordered: one lost, repeated, reordered or corrupted
is an error) and that it came from the child's path. The child checks each acknowledgement
names the burst it sent and reports anything else in place of its next burst ("ERROR ...").
Progress: bursts checked."""

from __future__ import annotations

import socket

from tests.workloads.catalogue import _common

BURST = 8
HOLD = 0.02
BIGGEST = 6000


def child(path: str, own_path: str) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(own_path)
    sock.connect(path)
    seq = burst = 0
    while True:
        for _ in range(BURST):
            sock.send(_common.make_message(b"dgram", seq, BIGGEST))
            seq += 1
        ack = sock.recv(BIGGEST)
        if ack != f"ack {burst}".encode():
            sock.send(b"ERROR burst " + str(burst).encode() + b" acknowledged as " + ack[:60])
        burst += 1


def main() -> None:
    args, status = _common.start("unix_dgram")
    path = str(args.work_dir / "rank.sock")
    child_path = str(args.work_dir / "child.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    pid = _common.fork_child(lambda: child(path, child_path))
    _common.at_exit(lambda: _common.kill_and_reap([pid]))
    seq = burst = 0
    while True:
        _common.pause(HOLD)
        problems: list[str | None] = []
        for _ in range(BURST):
            data, sender = sock.recvfrom(BIGGEST * 2)
            while data.startswith(b"ERROR "):
                status.error(f"the child: {data[6:].decode(errors='replace')}")
                data, sender = sock.recvfrom(BIGGEST * 2)
            problems.append(_common.check_message(data, b"dgram", seq, BIGGEST))
            if sender != child_path:
                problems.append(f"datagram {seq} from {sender!r}, not {child_path}")
            seq += 1
        status.check_all(problems)
        sock.sendto(f"ack {burst}".encode(), child_path)
        burst += 1


if __name__ == "__main__":
    main()
