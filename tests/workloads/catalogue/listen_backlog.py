"""listen_backlog (2 ranks): rank 1 opens CONNECTIONS connections to rank 0, which does not
accept them for --backlog-hold seconds, so they sit established in its accept queue with
their greetings unread; then rank 0 accepts them all and both keep talking on them.

Covers: a listening socket with connections in its backlog (CRIU must dump the queued,
not-yet-accepted sockets and their data) and, afterwards, several established connections.
Rank 0 checks it accepts exactly CONNECTIONS connections whose greetings name each index
once, then answers requests round-robin; rank 1 checks every answer on every connection
(sequence-numbered, checksummed messages per connection). No connection is opened after the
start. Progress: greetings and messages checked (rank 0 makes none during the hold)."""

from __future__ import annotations

import argparse

from tests.workloads.catalogue import _common

CONNECTIONS = 6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backlog-hold",
        type=float,
        default=5.0,
        help="seconds (of running, not of being frozen) rank 0 leaves connections unaccepted",
    )


def greeting(index: int) -> bytes:
    return f"hello from connection {index} of {CONNECTIONS}".encode()


def check_greetings(greetings: list[bytes]) -> list[str]:
    expected = {greeting(i) for i in range(CONNECTIONS)}
    problems = [f"unexpected greeting {g[:60]!r}" for g in greetings if g not in expected]
    if len(set(greetings)) != len(greetings):
        problems.append("a greeting arrived on two connections")
    if len(greetings) != CONNECTIONS:
        problems.append(f"{len(greetings)} connections, expected {CONNECTIONS}")
    return problems


def tag(index: int) -> bytes:
    return f"conn{index}".encode()


def serve(args: _common.Args, status: _common.Status) -> None:
    listener = _common.listen_tcp(args.own_address, args.listen_port(0), backlog=16)
    for _ in range(int(args.extra.backlog_hold / 0.01)):
        _common.pause(0.01)  # ticks, so that time spent frozen does not count
    accepted = [listener.accept()[0] for _ in range(CONNECTIONS)]
    listener.close()
    greetings = [_common.recv_frame(sock) for sock in accepted]
    if problems := check_greetings(greetings):
        for problem in problems:
            status.error(problem)
        _common.idle_forever()
    status.ok(CONNECTIONS)
    by_index = {greetings.index(greeting(i)): i for i in range(CONNECTIONS)}
    seq = 0
    while True:
        for position, sock in enumerate(accepted):
            index = by_index[position]
            status.check(_common.check_message(_common.recv_frame(sock), tag(index), seq))
            sock.sendall(_common.frame(_common.make_message(b"re-" + tag(index), seq)))
        seq += 1


def connect(args: _common.Args, status: _common.Status) -> None:
    connections = []
    for index in range(CONNECTIONS):
        sock = _common.connect_tcp(args.addresses[0], args.listen_port(0))
        sock.sendall(_common.frame(greeting(index)))
        connections.append(sock)
    seq = 0
    while True:
        for index, sock in enumerate(connections):
            sock.sendall(_common.frame(_common.make_message(tag(index), seq)))
        for index, sock in enumerate(connections):
            problem = _common.check_message(_common.recv_frame(sock), b"re-" + tag(index), seq)
            status.check(problem)
        seq += 1
        _common.pause(0.02)


def main() -> None:
    args, status = _common.start("listen_backlog", ranks=2, add_extra=add_arguments)
    try:
        (serve if args.rank == 0 else connect)(args, status)
    except (OSError, ValueError) as exc:
        status.error(f"connection: {exc!r}")
        _common.idle_forever()


if __name__ == "__main__":
    main()
