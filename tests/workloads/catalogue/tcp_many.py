"""tcp_many (2 ranks): rank 1 opens CONNECTIONS (200) TCP connections to rank 0 at A0:P; in
rounds, it sends one request on every connection, then waits for all the answers, which
rank 0 (one thread, a selector over all of them) sends as each request arrives.

Covers: many established connections of one job at once (CRIU's TCP repair of each, crctl
rewriting the endpoints of all 200 in the images), with requests and answers in flight on
many of them when the job is frozen. Each connection starts with a frame naming its index;
its messages are tagged with the index and numbered per connection (_common.make_message),
so a message lost, repeated, reordered, corrupted, or arriving on another connection is an
error on the rank that reads it. Progress: rounds checked (every connection's message of
that round read and checked: requests on rank 0, answers on rank 1)."""

from __future__ import annotations

import selectors
import socket

from tests.workloads.catalogue import _common

CONNECTIONS = 200
MAX_SIZE = 300
ROUND_PAUSE = 0.1


def tag(index: int) -> bytes:
    return f"conn-{index}".encode()


class Served:
    """Rank 0's side of one connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = _common.FrameReader()
        self.index: int | None = None
        self.seq = 0


def serve(listener: socket.socket, status: _common.Status) -> None:
    selector = selectors.DefaultSelector()
    for _ in range(CONNECTIONS):
        sock, _ = listener.accept()
        selector.register(sock, selectors.EVENT_READ, Served(sock))
    listener.close()
    checked = 0
    while True:
        for key, _ in selector.select():
            served: Served = key.data
            data = served.sock.recv(65536)
            if not data:
                raise ConnectionError(f"connection {served.index} closed by rank 1")
            for payload in served.reader.feed(data):
                if served.index is None:
                    served.index = int(payload)
                    continue
                problem = _common.check_message(payload, tag(served.index), served.seq, MAX_SIZE)
                if problem is not None:
                    status.error(problem)
                answer = _common.make_message(tag(served.index), served.seq, MAX_SIZE)
                served.sock.sendall(_common.frame(answer))
                served.seq += 1
                checked += 1
                if checked % CONNECTIONS == 0:
                    status.ok()


def ask(address: str, port: int, status: _common.Status) -> None:
    socks = [_common.connect_tcp(address, port) for _ in range(CONNECTIONS)]
    selector = selectors.DefaultSelector()
    readers = []
    for index, sock in enumerate(socks):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(_common.frame(str(index).encode()))
        readers.append(_common.FrameReader())
        selector.register(sock, selectors.EVENT_READ, index)
    seq = 0
    while True:
        for index, sock in enumerate(socks):
            sock.sendall(_common.frame(_common.make_message(tag(index), seq, MAX_SIZE)))
        answered: set[int] = set()
        problems: list[str | None] = []
        while len(answered) < CONNECTIONS:
            for key, _ in selector.select():
                index = key.data
                data = socks[index].recv(65536)
                if not data:
                    raise ConnectionError(f"connection {index} closed by rank 0")
                for payload in readers[index].feed(data):
                    problems.append(_common.check_message(payload, tag(index), seq, MAX_SIZE))
                    if index in answered:
                        problems.append(f"connection {index}: two answers in round {seq}")
                    answered.add(index)
        status.check_all(problems)
        seq += 1
        _common.pause(ROUND_PAUSE)


def main() -> None:
    args, status = _common.start("tcp_many", ranks=2)
    try:
        if args.rank == 0:
            serve(_common.listen_tcp(args.own_address, args.listen_port(0), 256), status)
        else:
            ask(args.addresses[0], args.listen_port(0), status)
    except (OSError, ValueError) as exc:
        status.error(f"connections: {exc!r}")
        _common.idle_forever()


if __name__ == "__main__":
    main()
