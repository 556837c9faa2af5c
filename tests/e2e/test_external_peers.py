"""Connections to peers outside the job: a checkpoint tells them from the job's own links, and
a restore can bring exactly those back closed, so the application sees a dead socket at once
instead of hanging on one nobody answers, while its links within the job carry on.

Everything made here is named crext-* (bridge crext-br0) and lives in 198.19.0.0/24, apart
from test_images' crimg-* hosts and a running `crctl testbed` (198.18.0.0/24). The lab
(namespaces, ranks as PID-namespace inits with a cwd each, clean-up by PID) is test_images'."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import images
from tests.e2e.helpers import wait_for
from tests.e2e.test_images import (
    WORKLOAD_COMMON,
    Lab,
    Status,
    criu_errors,
    dump,
    finish,
    in_ns,
    read_status,
    status,
    tcp_sockets,
)

pytestmark = pytest.mark.e2e

HOSTS = {"a": "198.19.0.21", "b": "198.19.0.22", "x": "198.19.0.23"}
JOB_PORT = 7200
OUTSIDE_PORT = 7300

PROGRAM = (
    r"""
import errno, os, select, socket, struct, sys, time

RECORD = 96
MESSAGE = 512
PATTERN = bytes(range(251)) * 4  # any k < 251 has MESSAGE - 8 bytes after it


"""
    + WORKLOAD_COMMON
    + r'''

def listen(address, port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(4)
    return sock


def connect(address, port, source):
    for _ in range(200):
        try:
            return socket.create_connection((address, port), source_address=(source, 0))
        except OSError:
            time.sleep(0.05)
    raise ConnectionError(f"cannot reach {address}:{port}")


def name(exc):
    return errno.errorcode.get(exc.errno, str(exc.errno))


def echo(status, address, port):
    """The job's other rank: echoes every message, checking it."""
    listener = listen(address, port)
    conn, _ = listener.accept()
    while True:
        data = recv_exact(conn, MESSAGE)
        if data != message(status.n):
            status.errors += 1
        conn.sendall(data)
        status.n += 1
        status.write()


def outside(status, address, port):
    """A server outside the job (never checkpointed): a beat every 20 ms to its one client."""
    listener = listen(address, port)
    conn, _ = listener.accept()
    try:
        while True:
            conn.sendall(b"b")
            status.n += 1
            status.write("sending")
            time.sleep(0.02)
    except OSError as exc:
        status.write(f"lost-{name(exc)}")
    while True:
        time.sleep(1)


def probe(sock):
    """What reading, then writing, the outside connection says once it stops being quiet."""
    try:
        if sock.recv(4096):
            return "live"
        read = "eof"
    except OSError as exc:
        read = name(exc)
    try:
        sock.send(b"?")
        write = "ok"
    except OSError as exc:
        write = name(exc)
    return f"read-{read},write-{write}"


def rank(status, peer, port, outside_address, outside_port, source):
    """The rank: a checked exchange with its peer rank every 5 ms, and beats from outside."""
    to_peer = connect(peer, port, source)
    to_outside = connect(outside_address, outside_port, source)
    state = "live"
    while True:
        data = message(status.n)
        to_peer.sendall(data)
        if recv_exact(to_peer, MESSAGE) != data:
            status.errors += 1
        status.n += 1
        if state == "live" and select.select([to_outside], [], [], 0)[0]:
            state = probe(to_outside)
        status.write(f"outside={state}")
        time.sleep(0.005)


role, status, args = sys.argv[1], Status(sys.argv[2]), sys.argv[3:]
try:
    if role == "echo":
        echo(status, args[0], int(args[1]))
    elif role == "outside":
        outside(status, args[0], int(args[1]))
    else:
        rank(status, args[0], int(args[1]), args[2], int(args[3]), args[4])
except BaseException as exc:
    status.errors += 1
    status.write(f"{type(exc).__name__}: {exc}")
    raise
'''
)


@pytest.fixture
def lab() -> Iterator[Lab]:
    bench = Lab(prefix="crext", hosts=HOSTS, program=PROGRAM)
    try:
        yield bench
    finally:
        bench.close()


def _tcp(
    id: int, state: str, local: str, peer: str | None, family: str = "ipv4", proto: str = "tcp"
) -> images.InetSocket:
    def endpoint(text: str) -> images.Endpoint:
        address, _, port = text.rpartition(":")
        return images.Endpoint(address.strip("[]"), int(port))

    return images.InetSocket(
        id=id,
        ino=id,
        family="ipv6" if family == "ipv6" else "ipv4",
        type="stream" if proto == "tcp" else "dgram",
        proto=proto,
        state=state,
        local=endpoint(local),
        peer=endpoint(peer) if peer else None,
    )


def test_external_connections_are_those_whose_peer_is_outside_the_job() -> None:
    """A connection in any state but listen and close whose peer is neither loopback nor an
    address of the job is external; IPv4-mapped IPv6 peers count as their IPv4 address, and
    listeners, closed sockets and UDP never count."""
    job = {"198.19.0.21", "198.19.0.22", "2001:db8::22"}
    sockets = (
        _tcp(1, "established", "198.19.0.21:40000", "198.19.0.22:7200"),  # to the job
        _tcp(2, "established", "198.19.0.21:40001", "198.19.0.23:7300"),  # outside
        _tcp(3, "close-wait", "198.19.0.21:40002", "203.0.113.9:443"),  # outside, half closed
        _tcp(4, "established", "127.0.0.1:40003", "127.0.0.1:5432"),  # loopback
        _tcp(5, "listen", "0.0.0.0:7200", None),
        _tcp(6, "close", "0.0.0.0:0", None),
        _tcp(7, "established", "[::ffff:198.19.0.21]:1", "[::ffff:198.19.0.22]:2", "ipv6"),
        _tcp(8, "established", "[::ffff:198.19.0.21]:1", "[::ffff:198.19.0.99]:2", "ipv6"),
        _tcp(9, "established", "[2001:db8::21]:1", "[2001:db8:0::22]:7200", "ipv6"),
        _tcp(10, "established", "[::1]:1", "[::1]:2", "ipv6"),
        _tcp(11, "established", "198.19.0.21:9", "198.19.0.77:53", proto="udp"),
    )
    summary = images.ImageSummary(Path("/nonexistent"), (), sockets, ())

    assert [s.id for s in images.external_connections(summary, job)] == [2, 3, 8]
    assert images.external_connections(summary, job | {"198.19.0.23"}) == [sockets[2], sockets[7]]


def restore(lab: Lab, namespace: str, images_dir: Path) -> subprocess.Popen[bytes]:
    """Start `criu restore --tcp-established -d` of ``images_dir`` in ``namespace``; the root's
    PID goes to restore.pid beside the images."""
    return lab.popen(
        in_ns(namespace, lab.criu, "restore", "-D", str(images_dir), "-d", "--tcp-established",
              "--pidfile", str(images_dir / "restore.pid"), "-v4", "-o", "restore.log"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def test_only_the_outside_connection_comes_back_closed(lab: Lab) -> None:
    """Rank A talks to rank B (the job) and to server X (outside it). A and B are dumped
    (kill mode, --tcp-established); exactly A's connection to X is external; restored with it
    closed in A's working copy, A's application reads end of file and gets EPIPE on writing to
    the X socket right away, while A and B go on exchanging checked messages without error."""
    a, b, x = (HOSTS[h] for h in "abx")
    lab.bridge()
    for host in HOSTS:
        lab.host(host)
    _, outside_status = lab.start("crext-x", "outside", "outside", x, str(OUTSIDE_PORT))
    b_pid, b_status = lab.start("crext-b", "b", "echo", b, str(JOB_PORT))
    a_pid, a_status = lab.start("crext-a", "a", "rank", b, str(JOB_PORT), x, str(OUTSIDE_PORT), a)

    def running(path: Path, at_least: int) -> Status | None:
        s = read_status(path)
        return s if s and s.n >= at_least and s.errors == 0 else None

    wait_for(lambda: running(a_status, 50), 15, "A exchanging with B")
    wait_for(lambda: running(outside_status, 10), 15, "X beating to A")
    assert status(a_status).note == "outside=live"

    image_a, image_b = lab.root / "img-a", lab.root / "img-b"
    dumps = [dump(lab, "crext-a", a_pid, image_a), dump(lab, "crext-b", b_pid, image_b)]
    finish(dumps[0], image_a / "dump.log", "criu dump of A")
    finish(dumps[1], image_b / "dump.log", "criu dump of B")
    at_dump = {"a": status(a_status), "b": status(b_status)}
    assert all(s.errors == 0 for s in at_dump.values()), at_dump

    # Detection, at checkpoint time: only A's link to X leaves the job.
    summary_a, summary_b = images.inspect(image_a), images.inspect(image_b)
    external = images.external_connections(summary_a, {a, b})
    assert [(s.local.address, str(s.peer), s.state) for s in external] == [
        (a, f"{x}:{OUTSIDE_PORT}", "established")
    ]
    assert images.external_connections(summary_b, {a, b}) == []
    to_x = external[0]

    # The working copies: A's with the connection to X closed, B's as dumped.
    work_a, work_b = lab.root / "work-a", lab.root / "work-b"
    images.make_working_copy(image_a, work_a)
    images.make_working_copy(image_b, work_b)
    assert images.close_connections(work_a, external) == 1
    assert images.close_connections(work_a, external) == 0  # already closed
    closed = {s.id: s for s in images.inspect(work_a).sockets}
    assert (closed[to_x.id].state, closed[to_x.id].peer) == ("close", None)
    assert closed[to_x.id].local == images.Endpoint("0.0.0.0", 0)
    assert {i: s for i, s in closed.items() if i != to_x.id} == {
        s.id: s for s in summary_a.sockets if s.id != to_x.id
    }
    stream = f"tcp-stream-{to_x.ino:x}.img"
    assert not (work_a / stream).exists() and (image_a / stream).exists()

    restores = {"a": restore(lab, "crext-a", work_a), "b": restore(lab, "crext-b", work_b)}
    restored = {}
    for host, proc in restores.items():
        work = lab.root / f"work-{host}"
        finish(proc, work / "restore.log", f"criu restore of {host.upper()}")
        restored[host] = int((work / "restore.pid").read_text())
        lab.pin(restored[host])

    def noticed() -> Status | None:
        s = read_status(a_status)
        return s if s and s.note != "outside=live" else None

    try:
        seen = wait_for(noticed, 10, "A to notice its outside connection closed")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{criu_errors(work_a / 'restore.log')}") from None
    # Closed both ways: reading says end of file, writing fails with EPIPE (no SIGPIPE here).
    assert (seen.errors, seen.note) == (0, "outside=read-eof,write-EPIPE"), seen

    try:
        a_after = wait_for(
            lambda: running(a_status, at_dump["a"].n + 200), 20, "200 more exchanges"
        )
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\nA at dump {at_dump['a']}, now {read_status(a_status)}; "
            f"B at dump {at_dump['b']}, now {read_status(b_status)}"
        ) from None
    b_after = status(b_status)
    assert (a_after.errors, a_after.note) == (0, seen.note), a_after
    assert (b_after.errors, b_after.note) == (0, "ok"), b_after
    assert b_after.n >= at_dump["b"].n + 200

    # A's link to B is a live connection again; its link to X is no connection at all.
    peers = {peer for _, peer, state in tcp_sockets(restored["a"]) if state == "established"}
    assert peers == {f"{b}:{JOB_PORT}"}
    print(
        f"\nA's outside socket after the restore: {seen.note.removeprefix('outside=')}; "
        f"A-B: {a_after.n - at_dump['a'].n} exchanges since the dump, 0 errors; "
        f"X: {status(outside_status).note}"
    )
