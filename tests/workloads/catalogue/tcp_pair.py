"""tcp_pair (2 ranks): rank 0 serves, rank 1 connects to A0:P; sequence-numbered messages
both ways on the one connection, several in flight.

Covers: an established TCP connection moved between hosts with data in its send and receive
queues (CRIU's TCP repair mode; crctl rewrites the endpoints). Rank 1 keeps WINDOW requests
outstanding; rank 0 checks each request and answers it; rank 1 checks each answer. Every
message carries a sequence number and a checksum of a body that follows from it, so a lost,
repeated, reordered or corrupted message is an error on the side that reads it. Progress:
messages checked (requests on rank 0, answers on rank 1)."""

from __future__ import annotations

import socket

from tests.workloads.catalogue import _common

WINDOW = 4
REQUEST, ANSWER = b"request", b"answer"


def serve(sock: socket.socket, status: _common.Status) -> None:
    seq = 0
    while True:
        status.check(_common.check_message(_common.recv_frame(sock), REQUEST, seq))
        sock.sendall(_common.frame(_common.make_message(ANSWER, seq)))
        seq += 1


def request(sock: socket.socket, status: _common.Status) -> None:
    sent = answered = 0
    while True:
        while sent - answered < WINDOW:
            sock.sendall(_common.frame(_common.make_message(REQUEST, sent)))
            sent += 1
        status.check(_common.check_message(_common.recv_frame(sock), ANSWER, answered))
        answered += 1
        _common.pause(0.005)


def main() -> None:
    args, status = _common.start("tcp_pair", ranks=2)
    if args.rank == 0:
        listener = _common.listen_tcp(args.own_address, args.listen_port(0))
        sock, _ = listener.accept()
        listener.close()
        role = serve
    else:
        sock = _common.connect_tcp(args.addresses[0], args.listen_port(0))
        role = request
    try:
        role(sock, status)
    except (OSError, ValueError) as exc:
        status.error(f"connection: {exc!r}")
        _common.idle_forever()


if __name__ == "__main__":
    main()
