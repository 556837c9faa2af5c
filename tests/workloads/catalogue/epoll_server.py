"""epoll_server (2 ranks): rank 0 multiplexes CONNECTIONS connections from rank 1 with
select.epoll on non-blocking sockets and echoes every message; rank 1 checks every echo.

Covers: an epoll instance with its registered descriptors (CRIU restores the epoll set and
its targets), non-blocking sockets with partial reads/writes buffered in the program. Rank 1
keeps two messages in flight on each connection; rank 0 decodes each connection's stream,
checks every message (sequence number and checksum per connection) before echoing it; rank 1
checks each echo. Progress: messages checked on each side."""

from __future__ import annotations

import select
import socket

from tests.workloads.catalogue import _common

CONNECTIONS = 8
IN_FLIGHT = 2


def tag(index: int) -> bytes:
    return f"epoll{index}".encode()


class Echoer:
    """One connection on rank 0: its stream decoder, what it still owes the peer, and the next
    sequence number it expects. Its index comes from the first byte the peer sends."""

    def __init__(self, sock: socket.socket, index: int) -> None:
        self.sock = sock
        self.index = index
        self.reader = _common.FrameReader()
        self.outgoing = bytearray()
        self.expected = 0

    def take(self, data: bytes, status: _common.Status) -> None:
        for message in self.reader.feed(data):
            problem = _common.check_message(message, tag(self.index), self.expected)
            status.check(problem)
            self.expected += 1
            self.outgoing += _common.frame(message)


def serve(args: _common.Args, status: _common.Status) -> None:
    listener = _common.listen_tcp(args.own_address, args.listen_port(0))
    echoers: dict[int, Echoer] = {}
    for _ in range(CONNECTIONS):
        sock, _ = listener.accept()
        index = _common.read_exact(sock.recv, 1)[0]
        sock.setblocking(False)
        echoers[sock.fileno()] = Echoer(sock, index)
    listener.close()
    epoll = select.epoll()
    for fd in echoers:
        epoll.register(fd, select.EPOLLIN)
    while True:
        for fd, events in epoll.poll(1.0):
            echoer = echoers[fd]
            if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                try:
                    data = echoer.sock.recv(65536)
                except BlockingIOError:
                    data = None
                if data == b"":
                    status.error(f"connection {echoer.index} closed by rank 1")
                    epoll.unregister(fd)
                    continue
                if data:
                    echoer.take(data, status)
            if echoer.outgoing:
                try:
                    sent = echoer.sock.send(echoer.outgoing)
                except BlockingIOError:
                    sent = 0
                del echoer.outgoing[:sent]
            mask = select.EPOLLIN | (select.EPOLLOUT if echoer.outgoing else 0)
            epoll.modify(fd, mask)


def request(args: _common.Args, status: _common.Status) -> None:
    connections = []
    for index in range(CONNECTIONS):
        sock = _common.connect_tcp(args.addresses[0], args.listen_port(0))
        sock.sendall(bytes([index]))
        connections.append(sock)
    sent = [0] * CONNECTIONS
    checked = [0] * CONNECTIONS
    while True:
        for index, sock in enumerate(connections):
            while sent[index] - checked[index] < IN_FLIGHT:
                sock.sendall(_common.frame(_common.make_message(tag(index), sent[index])))
                sent[index] += 1
        for index, sock in enumerate(connections):
            echo = _common.recv_frame(sock)
            problem = _common.check_message(echo, tag(index), checked[index])
            status.check(problem and f"echo: {problem}")
            checked[index] += 1
        _common.pause(0.01)


def main() -> None:
    args, status = _common.start("epoll_server", ranks=2)
    try:
        (serve if args.rank == 0 else request)(args, status)
    except (OSError, ValueError) as exc:
        status.error(f"connection: {exc!r}")
        _common.idle_forever()


if __name__ == "__main__":
    main()
