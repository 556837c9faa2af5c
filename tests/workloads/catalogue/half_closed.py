"""half_closed (2 ranks): rank 1 connects, sends one block and shuts its write side
(SHUT_WR); rank 0 reads the block to EOF and then streams messages back on the half-closed
connection for ever.

Covers: a TCP connection in the half-closed state (FIN received on one side, FIN_WAIT2 /
CLOSE_WAIT), which CRIU must restore with its shutdown state. Rank 0 checks the block, and
before each message that the connection still reads EOF (a peek); rank 1 checks every message
(sequence-numbered, checksummed) and, every PROBE_EVERY messages, that its write side is still
shut (send fails with EPIPE). Progress: messages sent after a good EOF check (rank 0),
messages checked (rank 1)."""

from __future__ import annotations

import socket

from tests.workloads.catalogue import _common

BLOCK = bytes(range(256)) * 256
PROBE_EVERY = 50
STREAM = b"half-closed"


def check_block(block: bytes) -> str | None:
    if block == BLOCK:
        return None
    return f"the block read to EOF has {len(block)} bytes and is not what rank 1 sent"


def read_to_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def still_at_eof(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False


def write_side_shut(sock: socket.socket) -> bool:
    try:
        sock.send(b"!")
    except BrokenPipeError:
        return True
    return False


def stream_back(sock: socket.socket, status: _common.Status) -> None:
    problem = check_block(read_to_eof(sock))
    if problem:
        status.error(problem)
    seq = 0
    while True:
        if not still_at_eof(sock):
            status.error("the half-closed connection no longer reads EOF")
            _common.idle_forever()
        sock.sendall(_common.frame(_common.make_message(STREAM, seq)))
        status.ok()
        seq += 1
        _common.pause(0.01)


def receive(sock: socket.socket, status: _common.Status) -> None:
    sock.sendall(BLOCK)
    sock.shutdown(socket.SHUT_WR)
    seq = 0
    while True:
        problem = _common.check_message(_common.recv_frame(sock), STREAM, seq)
        status.check(problem)
        seq += 1
        if seq % PROBE_EVERY == 0 and not write_side_shut(sock):
            status.error("a send on the shut write side went through")


def main() -> None:
    args, status = _common.start("half_closed", ranks=2)
    try:
        if args.rank == 0:
            listener = _common.listen_tcp(args.own_address, args.listen_port(0))
            sock, _ = listener.accept()
            listener.close()
            stream_back(sock, status)
        else:
            receive(_common.connect_tcp(args.addresses[0], args.listen_port(0)), status)
    except (OSError, ValueError) as exc:
        status.error(f"connection: {exc!r}")
        _common.idle_forever()


if __name__ == "__main__":
    main()
