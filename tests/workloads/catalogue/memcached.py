"""memcached (2 ranks): rank 0 runs memcached (Debian's, as its own child: listening on A0:P
only, no UDP, as user nobody when the rank is root, since memcached refuses to run as root
without -u) and holds one connection doing incr; rank 1 holds one connection to A0:P doing
set, gets, cas and incr on its own keys in memcached's text protocol.

Covers: a real third-party server whose threads (a listener, worker threads, an LRU crawler)
run as another user than the rank, moved with a connection from another host and one from
its own. Rank 0 checks every incr answers one more than the last. Rank 1 keeps a model of
its keys (value, flags): every gets must return the model's value and flags, a cas with the
unique it just read must be STORED and the same cas again must be EXISTS (the unique moved
on), an incr must answer the model's count, a delete must be DELETED and a gets after it
find nothing. So a lost or repeated store, or CAS uniques not kept, is an error. The server
dying is an error; SIGTERM stops it. Progress: answers checked."""

from __future__ import annotations

import os
import random
import socket

from tests.workloads.catalogue import _clients, _common, _servers

KEYS = 32
SERVER_USER = "nobody"


def start_server(args: _common.Args) -> _servers.Child:
    program = _servers.find_program("memcached", "/usr/bin/memcached")
    argv = [
        program,
        *("-l", args.own_address, "-p", str(args.listen_port(0)), "-U", "0"),
        *("-m", "64", "-c", "128", "-t", "2", "-v"),
    ]
    user = SERVER_USER if os.geteuid() == 0 else None
    return _servers.spawn(
        "memcached", argv, log=args.work_dir / "memcached.log", user=user, cwd=args.work_dir
    )


def count(client: _clients.Memcache, status: _common.Status, server: _servers.Child) -> None:
    stored = client.set("r0:counter", b"0")
    if stored != "STORED":
        status.error(f"set r0:counter: {stored}")
    expected = 0
    while True:
        expected += 1
        got = client.incr("r0:counter", 1)
        if got == expected:
            status.ok()
        else:
            status.error(f"incr r0:counter: expected {expected}, got {got!r}")
            expected = got if isinstance(got, int) else expected
        if (problem := server.problem()) is not None:
            status.error(problem)
            _common.idle_forever()
        _common.pause(0.01)


class Model:
    def __init__(self, seed: int) -> None:
        self.choose = random.Random(seed)
        self.items: dict[str, tuple[bytes, int]] = {}
        self.counters: dict[str, int] = {}
        self.seq = 0

    def next_value(self) -> tuple[bytes, int]:
        self.seq += 1
        return _common.message_body(b"memcached", self.seq, 300), self.seq % 65536


def check_gets(
    found: tuple[bytes, int, int] | None, key: str, want: tuple[bytes, int] | None
) -> str | None:
    """None if `gets key` found what the model holds (or nothing if it holds nothing)."""
    if want is None:
        return None if found is None else f"gets {key}: found a value, expected none"
    if found is None:
        return f"gets {key}: nothing, expected {len(want[0])} bytes with flags {want[1]}"
    if (found[0], found[1]) != want:
        return f"gets {key}: {len(found[0])} bytes flags {found[1]} differ from the model's"
    return None


def expect(status: _common.Status, what: str, got: object, want: object) -> None:
    status.check(None if got == want else f"{what}: expected {want!r}, got {got!r}")


def step(client: _clients.Memcache, model: Model, status: _common.Status) -> None:
    key = f"r1:k{model.choose.randrange(KEYS)}"
    action = model.choose.randrange(5)
    if action == 0:
        value = model.next_value()
        expect(status, f"set {key}", client.set(key, *value), "STORED")
        model.items[key] = value
    elif action == 1:
        found = client.gets(key)
        status.check(check_gets(found, key, model.items.get(key)))
        if found is None or key not in model.items:
            return
        value = model.next_value()
        expect(status, f"cas {key} (fresh unique)", client.cas(key, *value, found[2]), "STORED")
        model.items[key] = value
        stale = model.next_value()
        expect(status, f"cas {key} (stale unique)", client.cas(key, *stale, found[2]), "EXISTS")
    elif action == 2:
        counter = f"r1:n{key}"
        if counter not in model.counters:
            expect(status, f"set {counter}", client.set(counter, b"0"), "STORED")
            model.counters[counter] = 0
        by = model.choose.randrange(1, 500)
        model.counters[counter] += by
        expect(status, f"incr {counter}", client.incr(counter, by), model.counters[counter])
    elif action == 3 and key in model.items:
        expect(status, f"delete {key}", client.delete(key), "DELETED")
        del model.items[key]
        status.check(check_gets(client.gets(key), key, None))
    else:
        status.check(check_gets(client.gets(key), key, model.items.get(key)))


def main() -> None:
    args, status = _common.start("memcached", ranks=2)
    try:
        server = start_server(args) if args.rank == 0 else None
        sock = _common.connect_tcp(args.addresses[0], args.listen_port(0))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = _clients.Memcache(sock)
        if server is not None:
            count(client, status, server)
        model = Model(seed=2)
        while True:
            step(client, model, status)
            _common.pause(0.005)
    except (OSError, ValueError, _clients.ProtocolError, _servers.ProgramMissing) as exc:
        status.error(f"memcached: {exc!r}")
        _common.idle_forever()


if __name__ == "__main__":
    main()
