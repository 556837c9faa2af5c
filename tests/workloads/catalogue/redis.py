"""redis (2 ranks): rank 0 runs redis-server (Debian's, as its own child: bound to A0 only,
port P, no persistence, its dir in the work dir) and holds one connection doing INCR; rank 1
holds one connection to A0:P doing SET/GET/INCRBY/LPUSH/LRANGE/LLEN/LTRIM over its own key
space, several commands in flight (pipelined).

Covers: a real third-party server (an event loop, jemalloc, background threads) moved with
live clients: the connection between two hosts (rank 1 <-> rank 0) and one within rank 0's
host (its own client <-> its own server), both rewritten by crctl. Rank 0 checks every INCR
answers one more than the last; rank 1 keeps a model of its keys (strings, counters, lists),
computes every answer from the model as it sends the command and checks the server's against
it, so a lost, repeated or misapplied command is an error. The server dying is an error.
SIGTERM stops the server. Progress: answers checked."""

from __future__ import annotations

import random
import signal
import socket

from tests.workloads.catalogue import _clients, _common, _servers

KEYS_PER_KIND = 16
PIPELINE = 4
LIST_LIMIT = 24


def start_server(args: _common.Args) -> _servers.Child:
    program = _servers.find_program("redis-server", "/usr/bin/redis-server")
    argv = [
        program,
        *("--bind", args.own_address, "--port", str(args.listen_port(0))),
        *("--save", "", "--appendonly", "no", "--daemonize", "no"),
        *("--dir", str(args.work_dir), "--logfile", "", "--protected-mode", "no"),
        *("--databases", "1", "--loglevel", "notice"),
    ]
    return _servers.spawn(
        "redis-server", argv, log=args.work_dir / "redis.log", stop_signal=signal.SIGTERM
    )


def count(client: _clients.Resp, status: _common.Status, server: _servers.Child) -> None:
    expected = 0
    while True:
        expected += 1
        got = client.call("INCR", "r0:counter")
        if got != expected:
            status.error(f"INCR r0:counter: expected {expected}, got {got!r}")
            expected = got if isinstance(got, int) else expected
        else:
            status.ok()
        if (problem := server.problem()) is not None:
            status.error(problem)
            _common.idle_forever()
        _common.pause(0.01)


class Model:
    """What rank 1's keys hold; `plan` picks the next command and the answer it must get."""

    def __init__(self, seed: int) -> None:
        self.choose = random.Random(seed)
        self.strings: dict[str, bytes] = {}
        self.counters: dict[str, int] = {}
        self.lists: dict[str, list[bytes]] = {}
        self.seq = 0

    def value(self) -> bytes:
        self.seq += 1
        return _common.message_body(b"redis", self.seq, 200)

    def plan(self) -> tuple[list[bytes | str | int], _clients.RespValue]:
        i = self.choose.randrange(KEYS_PER_KIND)
        action = self.choose.randrange(7)
        if action == 0:
            key, value = f"r1:s{i}", self.value()
            self.strings[key] = value
            return ["SET", key, value], "OK"
        if action == 1:
            key = f"r1:s{i}"
            return ["GET", key], self.strings.get(key)
        if action == 2:
            key, by = f"r1:n{i}", self.choose.randrange(1, 1000)
            self.counters[key] = self.counters.get(key, 0) + by
            return ["INCRBY", key, by], self.counters[key]
        if action == 3:
            key = f"r1:n{i}"
            known = self.counters.get(key)
            return ["GET", key], None if known is None else str(known).encode()
        items = self.lists.setdefault(f"r1:l{i}", [])
        key = f"r1:l{i}"
        if action == 4:
            value = self.value()
            items.insert(0, value)
            return ["LPUSH", key, value], len(items)
        if action == 5:
            return ["LRANGE", key, 0, -1], [*items]
        if len(items) > LIST_LIMIT:
            del items[LIST_LIMIT // 2 :]
            return ["LTRIM", key, 0, LIST_LIMIT // 2 - 1], "OK"
        return ["LLEN", key], len(items)


def describe(value: _clients.RespValue) -> str:
    text = repr(value)
    return text if len(text) < 80 else text[:77] + "..."


def work(client: _clients.Resp, status: _common.Status) -> None:
    model = Model(seed=1)
    while True:
        batch = [model.plan() for _ in range(PIPELINE)]
        client.send(*(command for command, _ in batch))
        for command, expected in batch:
            got = client.reply()
            if got == expected:
                status.ok()
            else:
                status.error(
                    f"{' '.join(map(str, command[:2]))}: expected {describe(expected)}, "
                    f"got {describe(got)}"
                )
        _common.pause(0.005)


def main() -> None:
    args, status = _common.start("redis", ranks=2)
    try:
        server = start_server(args) if args.rank == 0 else None
        sock = _common.connect_tcp(args.addresses[0], args.listen_port(0))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = _clients.Resp(sock)
        if server is not None:
            count(client, status, server)
        else:
            work(client, status)
    except (OSError, ValueError, _clients.ProtocolError, _servers.ProgramMissing) as exc:
        status.error(f"redis: {exc!r}")
        _common.idle_forever()


if __name__ == "__main__":
    main()
