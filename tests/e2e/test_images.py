"""agent.images over real CRIU dumps: what a dump holds, a working copy and its rewritten
sockets, the built-in restart plugins, and a live TCP pair restarted on two other (emulated)
hosts with its addresses rewritten.

Everything made here is named crimg-* and lives in 198.19.0.0/24 (a running `crctl testbed` uses
crctl-* and 198.18.0.0/24). Dumped programs run as the init of their own PID namespace
(`unshare --pid --fork setsid`) and keep no growing file open: their stderr is opened
O_WRONLY|O_APPEND (CRIU records no size for it) and their progress is a fixed-size record they
overwrite in place."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import images
from agent.plugins.host_files import HostFiles
from agent.plugins.tcp_endpoints import TcpEndpoints
from crctl.plugins import PluginError, RestartContext
from tests.e2e.helpers import wait_for

pytestmark = pytest.mark.e2e

TOOLS = ("ip", "nsenter", "unshare", "setsid", "nft")
PORT = 7100
HOSTS = {  # name -> address on the bridge
    "a": "198.19.0.11",
    "b": "198.19.0.12",
    "c": "198.19.0.13",
    "d": "198.19.0.14",
}
SOLO_NS = "crimg-solo"
SOLO_ADDRESSES = ("198.19.0.50", "198.19.0.51", "2001:db8::50")
LOCK_TABLE = "crimg-lock"

# What the workloads of these tests share (each defines RECORD, MESSAGE and PATTERN first).
WORKLOAD_COMMON = r'''
def message(n):
    k = n % 251
    return struct.pack("!Q", n) + PATTERN[k : k + MESSAGE - 8]


class Status:
    """n exchanges so far, how many were wrong, a check value and a note: one fixed-size
    record overwritten in place, so the file never changes size (CRIU checks the size of files
    a task holds open)."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self.n = self.errors = 0
        self.write("start")

    def write(self, note="ok"):
        line = f"{self.n} {self.errors} {self.n * 7 + self.errors} {note}"
        os.pwrite(self.fd, (line[: RECORD - 1].ljust(RECORD - 1) + "\n").encode(), 0)


def recv_exact(sock, size):
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("peer closed")
        data += chunk
    return bytes(data)
'''

PROGRAM = (
    r"""
import os, socket, struct, sys, time

RECORD = 64
MESSAGE = 1024
PATTERN = bytes(range(251)) * 6


"""
    + WORKLOAD_COMMON
    + r"""

def family(address):
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def listen(address, port):
    sock = socket.socket(family(address), socket.SOCK_STREAM)
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


def exchange(status, sender, receiver):
    data = message(status.n)
    sender.sendall(data)
    if recv_exact(receiver, len(data)) != data:
        status.errors += 1


def server(status, address, port):
    listener = listen(address, port)  # kept open: it is dumped and restored too
    conn, _ = listener.accept()
    while True:
        data = recv_exact(conn, MESSAGE)
        if data != message(status.n):
            status.errors += 1
        conn.sendall(data)
        status.n += 1
        status.write()


def client(status, address, port, source):
    conn = connect(address, port, source)
    while True:
        exchange(status, conn, conn)
        status.n += 1
        status.write()
        time.sleep(0.005)


def solo(status, data_path, ghost_path):
    data = open(data_path, "r+b")
    data.seek(100)
    ghost = open(ghost_path, "w+b")
    ghost.write(b"g" * 777)
    ghost.flush()
    os.unlink(ghost_path)
    listener4 = listen("198.19.0.50", 7001)
    client4 = connect("198.19.0.50", 7001, "198.19.0.51")
    server4, _ = listener4.accept()
    listener6 = listen("2001:db8::50", 7002)
    client6 = connect("2001:db8::50", 7002, "2001:db8::50")
    server6, _ = listener6.accept()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 7003))
    dual = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)  # dual-stack, to an IPv4 listener
    dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    dual.bind(("::ffff:198.19.0.51", 0))
    dual.connect(("::ffff:198.19.0.50", 7001))
    dual_accepted, _ = listener4.accept()
    while True:
        exchange(status, client4, server4)
        exchange(status, client6, server6)
        status.n += 1
        status.write()
        time.sleep(0.02)


role, status, args = sys.argv[1], Status(sys.argv[2]), sys.argv[3:]
try:
    if role == "server":
        server(status, args[0], int(args[1]))
    elif role == "client":
        client(status, args[0], int(args[1]), args[2])
    else:
        solo(status, args[0], args[1])
except BaseException as exc:
    status.errors += 1
    status.write(f"{type(exc).__name__}: {exc}")
    raise
"""
)

HOLD_SCRIPT = """#!/bin/sh
# CRIU action script: hold a restore at post-restore until the test writes "release" to go.
[ "$CRTOOLS_SCRIPT_ACTION" = post-restore ] || exit 0
echo "$CRTOOLS_INIT_PID" > "$HOLD_DIR/reached.tmp" && mv "$HOLD_DIR/reached.tmp" "$HOLD_DIR/reached"
i=0
while [ ! -e "$HOLD_DIR/go" ]; do
    i=$((i + 1))
    [ "$i" -gt 6000 ] && exit 1
    sleep 0.01
done
[ "$(cat "$HOLD_DIR/go")" = release ]
"""


# -- the lab: everything a test creates, torn down whatever happens ------------------------


def run(*cmd: str, timeout: float = 30) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise AssertionError(f"`{' '.join(cmd)}` exited {result.returncode}: {result.stderr}")
    return result.stdout


def in_ns(namespace: str, *cmd: str) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{namespace}", "--", *cmd]


def _criu() -> str:
    if os.geteuid() != 0:
        pytest.fail("these tests run CRIU and make namespaces: run them as root", pytrace=False)
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    criu = shutil.which("criu") or shutil.which("criu", path="/usr/local/sbin:/usr/sbin")
    if criu is None:
        missing.append("criu (deploy/install-criu.sh)")
    if missing:
        pytest.fail(f"missing tools: {', '.join(missing)}", pytrace=False)
    assert criu is not None
    return criu


def criu_errors(log: Path) -> str:
    if not log.exists():
        return f"(no log at {log})"
    lines = [
        line
        for line in log.read_text(errors="replace").splitlines()
        if "Error (" in line and "RLIMIT_NOFILE" not in line
    ]
    return "\n".join(lines[-10:]) or "(no Error lines)"


@dataclass
class Status:
    n: int
    errors: int
    note: str


def read_status(path: Path) -> Status | None:
    """The program's record, or None while it is being rewritten (the check value guards it)."""
    match = re.fullmatch(r"(\d+) (\d+) (\d+) (.*?)\s*", path.read_text())
    if match is None:
        return None
    n, errors, check = (int(match.group(i)) for i in (1, 2, 3))
    return Status(n, errors, match.group(4)) if check == n * 7 + errors else None


def status(path: Path) -> Status:
    return wait_for(lambda: read_status(path), 5, f"a readable status in {path}", interval=0.01)


class Lab:
    """Emulated hosts ``<prefix>-<host>`` (namespaces with HOSTS-like addresses on the bridge
    ``<prefix>-br0``) and the processes run in them; ``close`` removes everything."""

    def __init__(
        self, *, prefix: str = "crimg", hosts: Mapping[str, str] = HOSTS, program: str = PROGRAM
    ) -> None:
        self.criu = _criu()
        self.prefix = prefix
        self.hosts = dict(hosts)
        self.root = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
        self.program = self.root / "program.py"
        self.program.write_text(program)
        self.hold_script = self.root / "hold.sh"
        self.hold_script.write_text(HOLD_SCRIPT)
        self.hold_script.chmod(0o755)
        self._pidfds: list[int] = []
        self._popens: list[subprocess.Popen[bytes]] = []
        self._namespaces: list[str] = []
        self._links: list[str] = []

    # network
    def namespace(self, name: str) -> str:
        if Path(f"/run/netns/{name}").exists():
            pytest.fail(f"network namespace {name} exists (left by an earlier run?)", pytrace=False)
        run("ip", "netns", "add", name)
        self._namespaces.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    @property
    def bridge_name(self) -> str:
        return f"{self.prefix}-br0"

    def bridge(self) -> None:
        name = self.bridge_name
        if Path(f"/sys/class/net/{name}").exists():
            pytest.fail(f"link {name} exists (left by an earlier run?)", pytrace=False)
        run("ip", "link", "add", name, "type", "bridge")
        self._links.append(name)
        run("ip", "link", "set", name, "up")

    def host(self, host: str) -> str:
        """Namespace <prefix>-<host> with eth0 on the bridge holding hosts[host]/24."""
        namespace = self.namespace(f"{self.prefix}-{host}")
        veth = f"{self.prefix}-v{host}"
        run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        self._links.append(veth)
        run("ip", "link", "set", veth, "master", self.bridge_name)
        run("ip", "link", "set", veth, "up")
        run("ip", "-n", namespace, "addr", "add", f"{self.hosts[host]}/24", "dev", "eth0")
        run("ip", "-n", namespace, "link", "set", "eth0", "up")
        return namespace

    def drop_host(self, host: str) -> None:
        """The old host goes away (its namespace and link), as a failed host would."""
        name, veth = f"{self.prefix}-{host}", f"{self.prefix}-v{host}"
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)
        self._namespaces.remove(name)
        subprocess.run(["ip", "link", "delete", veth], check=False, capture_output=True)
        self._links.remove(veth)

    # processes
    def pin(self, pid: int) -> None:
        self._pidfds.append(os.pidfd_open(pid))

    def popen(self, cmd: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, **kwargs)  # type: ignore[call-overload]
        self._popens.append(proc)
        return proc  # type: ignore[no-any-return]

    def start(self, namespace: str, name: str, *args: str) -> tuple[int, Path]:
        """Run the program as the init of a new PID namespace in ``namespace``; its PID (in
        ours) and its status file."""
        status_path = self.root / f"status-{name}"
        # Its own cwd: CRIU's parasite mounts /proc at <cwd>/proc.crtools in a task whose /proc
        # is not its PID namespace's, so two dumps of tasks sharing a cwd collide (EEXIST).
        cwd = self.root / f"cwd-{name}"
        cwd.mkdir()
        with (self.root / f"stderr-{name}").open("ab") as stderr:
            wrapper = self.popen(
                in_ns(
                    namespace, "unshare", "--pid", "--fork", "setsid",
                    sys.executable, "-I", str(self.program), args[0], str(status_path), *args[1:],
                ),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, cwd=cwd,
            )  # fmt: skip
        children = Path(f"/proc/{wrapper.pid}/task/{wrapper.pid}/children")
        pid = int(wait_for(lambda: children.read_text().split(), 5, f"{name}'s init")[0])
        self.pin(pid)
        wait_for(lambda: status_path.exists(), 5, f"{name}'s status file")
        return pid, status_path

    def close(self) -> None:
        for fd in self._pidfds:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            select.select([fd], [], [], 5)  # readable once the process has exited
            os.close(fd)
        for proc in self._popens:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for name in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)
        for link in reversed(self._links):
            subprocess.run(["ip", "link", "delete", link], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def lab() -> Iterator[Lab]:
    bench = Lab()
    try:
        yield bench
    finally:
        bench.close()


def dump(lab: Lab, namespace: str, pid: int, images_dir: Path) -> subprocess.Popen[bytes]:
    """Start a kill-mode `criu dump --tcp-established` of ``pid``'s tree, from its namespace."""
    images_dir.mkdir(parents=True)
    return lab.popen(
        in_ns(namespace, lab.criu, "dump", "-t", str(pid), "-D", str(images_dir),
               "--tcp-established", "-v4", "-o", "dump.log"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def finish(proc: subprocess.Popen[bytes], log: Path, what: str, timeout: float = 60) -> None:
    code = proc.wait(timeout=timeout)
    if code != 0:
        raise AssertionError(f"{what} exited {code}:\n{criu_errors(log)}")


# -- (a) and (b): one process holding every kind of socket and file ------------------------


@dataclass
class Solo:
    images_dir: Path
    data_file: Path
    ghost_file: Path
    stderr_file: Path
    status_n: int


@pytest.fixture(scope="module")
def solo() -> Iterator[Solo]:
    """A kill-mode dump of one process holding: a listening socket and an established
    connection over IPv4 (198.19.0.51 -> 198.19.0.50:7001) and IPv6 (2001:db8::50:7002), a
    dual-stack IPv6 socket connected to the IPv4 listener (::ffff:198.19.0.51 ->
    ::ffff:198.19.0.50:7001), a UDP socket on 127.0.0.1:7003, a 4096-byte file open read-write,
    and a deleted file."""
    bench = Lab()
    try:
        namespace = bench.namespace(SOLO_NS)
        for address in SOLO_ADDRESSES:
            prefix = 128 if ":" in address else 32
            run("ip", "-n", namespace, "addr", "add", f"{address}/{prefix}", "dev", "lo")
        data_file = bench.root / "data.bin"
        data_file.write_bytes(os.urandom(4096))
        ghost_file = bench.root / "ghost.bin"
        pid, status_path = bench.start(namespace, "solo", "solo", str(data_file), str(ghost_file))
        wait_for(lambda: (s := read_status(status_path)) and s.n >= 10, 10, "solo exchanging")
        images_dir = bench.root / "solo-images"
        finish(dump(bench, namespace, pid, images_dir), images_dir / "dump.log", "criu dump")
        final = status(status_path)
        assert final.errors == 0, final
        yield Solo(images_dir, data_file, ghost_file, bench.root / "stderr-solo", final.n)
    finally:
        bench.close()


def _socket(summary: images.ImageSummary, local: str, peer: str | None) -> images.InetSocket:
    found = [
        s
        for s in summary.sockets
        if str(s.local) == local and (str(s.peer) if s.peer else None) == peer
    ]
    assert len(found) == 1, f"{local} <-> {peer} in {summary.sockets}"
    return found[0]


def test_inspect_finds_listeners_connections_and_open_files(solo: Solo) -> None:
    """inspect reports every INET socket with its state and endpoints, the TCP listening ports,
    and the regular files with the sizes a restore will check."""
    summary = images.inspect(solo.images_dir)

    assert summary.tcp_listen_ports == (7001, 7002)
    listener = _socket(summary, "198.19.0.50:7001", None)
    assert (listener.family, listener.type, listener.proto, listener.state) == (
        "ipv4", "stream", "tcp", "listen",
    )  # fmt: skip
    client = next(s for s in summary.sockets if s.peer and str(s.peer) == "198.19.0.50:7001")
    assert client.state == "established" and client.local.address == "198.19.0.51"
    accepted = _socket(summary, "198.19.0.50:7001", str(client.local))
    assert accepted.state == "established"
    (Path(solo.images_dir) / f"tcp-stream-{client.ino:x}.img").stat()  # queues per connection
    assert _socket(summary, "[2001:db8::50]:7002", None).family == "ipv6"
    client6 = next(s for s in summary.sockets if s.peer and str(s.peer) == "[2001:db8::50]:7002")
    assert _socket(summary, "[2001:db8::50]:7002", str(client6.local)).state == "established"
    udp = _socket(summary, "127.0.0.1:7003", None)
    assert (udp.type, udp.proto) == ("dgram", "udp")
    dual = next(s for s in summary.sockets if str(s.peer) == "[::ffff:198.19.0.50]:7001")
    assert (dual.family, dual.state, dual.local.address) == (
        "ipv6", "established", "::ffff:198.19.0.51",
    )  # fmt: skip
    assert _socket(summary, "198.19.0.50:7001", f"198.19.0.51:{dual.local.port}").family == "ipv4"
    assert len(summary.sockets) == 9

    by_path = {f.path: f for f in summary.regular_files}
    data = by_path[str(solo.data_file)]
    assert (data.size, data.by_fd, data.ghost) == (4096, True, False)
    assert by_path[str(solo.ghost_file)].ghost
    assert by_path[str(solo.ghost_file)].size == 777
    # Opened O_WRONLY|O_APPEND: CRIU records no size, so it may grow without breaking a restore.
    assert by_path[str(solo.stderr_file)].size is None
    interpreter = by_path[os.path.realpath(sys.executable)]
    assert interpreter.size == Path(sys.executable).stat().st_size and not interpreter.by_fd
    assert images.verify_regular_files(summary) == []

    names = {f.name: f.size for f in summary.files}
    assert {"files.img", "inventory.img", "pstree.img"} <= names.keys()
    assert any(name.startswith("pages-") for name in names)
    assert all(size == (solo.images_dir / name).stat().st_size for name, size in names.items())


def test_working_copy_links_big_files_and_copies_files_img(solo: Solo, tmp_path: Path) -> None:
    """make_working_copy makes an identical folder with a fresh files.img, big unmodified files
    (pages) hard-linked and small ones copied, and leaves the source alone."""
    source = solo.images_dir
    before = images.digest_files(source)
    target = tmp_path / "work" / "rank-0"

    report = images.make_working_copy(source, target)

    assert images.digest_files(source) == before
    assert images.verify(target, before, allow_extra=False) == []
    assert "files.img" in report.copied
    assert (target / "files.img").stat().st_ino != (source / "files.img").stat().st_ino
    pages = next(p for p in report.linked if p.startswith("pages-"))
    assert (target / pages).stat().st_ino == (source / pages).stat().st_ino
    assert sorted(report.linked + report.copied) == [p.name for p in sorted(source.iterdir())]
    assert list(target.parent.glob(".rank-0.partial-*")) == []


def test_rewrite_maps_addresses_in_a_working_copy_and_leaves_the_source_alone(
    solo: Solo, tmp_path: Path
) -> None:
    """rewrite_socket_addresses rewrites mapped local and peer addresses (IPv4, IPv6 and
    IPv4-mapped IPv6) of a working copy in a new files.img renamed into place, leaves unmapped
    ones (198.19.0.51, 127.0.0.1) alone and never writes through to the source."""
    source = solo.images_dir
    before = images.digest_files(source)
    target = tmp_path / "rewritten"
    images.make_working_copy(source, target)
    copied_inode = (target / "files.img").stat().st_ino

    report = images.rewrite_socket_addresses(
        target, {"198.19.0.50": "198.19.0.60", "2001:db8:0::50": "2001:db8::60"}
    )

    assert images.digest_files(source) == before
    assert report.images_dir == target
    assert dict(report.endpoints) == {
        # the listener, both ends of the connection, the accepted end of the dual-stack one
        ("198.19.0.50", "198.19.0.60"): 4,
        ("::ffff:198.19.0.50", "::ffff:198.19.0.60"): 1,  # the dual-stack socket's peer
        ("2001:db8::50", "2001:db8::60"): 5,  # the listener, both ends of both sockets
    }
    assert report.sockets == 8
    old = images.inspect(source)
    new = images.inspect(target)
    renamed = {
        "198.19.0.50": "198.19.0.60",
        "::ffff:198.19.0.50": "::ffff:198.19.0.60",
        "2001:db8::50": "2001:db8::60",
    }

    def expected(endpoint: images.Endpoint | None) -> images.Endpoint | None:
        if endpoint is None:
            return None
        return images.Endpoint(renamed.get(endpoint.address, endpoint.address), endpoint.port)

    assert [(s.id, s.state, expected(s.local), expected(s.peer)) for s in old.sockets] == [
        (s.id, s.state, s.local, s.peer) for s in new.sockets
    ]
    assert _socket(new, "127.0.0.1:7003", None)
    assert any(s.local.address == "198.19.0.51" for s in new.sockets)
    assert any(s.local.address == "::ffff:198.19.0.51" for s in new.sockets)
    assert new.regular_files == old.regular_files

    assert {p.path for p in images.verify(target, before)} == {"files.img"}
    assert (target / "files.img").stat().st_ino != copied_inode  # a new file, renamed in
    assert [p.name for p in target.iterdir() if p.name.startswith(".")] == []


def test_rewrite_with_nothing_to_map_leaves_files_img_as_it_is(solo: Solo, tmp_path: Path) -> None:
    """An empty map, or one naming no address of the dump, writes nothing."""
    target = tmp_path / "copy"
    images.make_working_copy(solo.images_dir, target)
    inode = (target / "files.img").stat().st_ino

    for address_map in ({}, {"203.0.113.1": "203.0.113.2"}):
        report = images.rewrite_socket_addresses(target, address_map)
        assert (dict(report.endpoints), report.sockets) == ({}, 0)
    assert (target / "files.img").stat().st_ino == inode


def test_skipping_criu_network_lock_rewrites_only_the_working_copy_inventory(
    solo: Solo, tmp_path: Path
) -> None:
    """The working copy's inventory says "no CRIU lock" (the source keeps the dump's method),
    nothing else in it changes, and a second call writes nothing."""
    from pycriu import images as criu_images

    def inventory(images_dir: Path) -> dict[str, object]:
        with (images_dir / "inventory.img").open("rb") as f:
            entry: dict[str, object] = criu_images.load(f)["entries"][0]
        return entry

    working = tmp_path / "rank-0"
    images.make_working_copy(solo.images_dir, working)
    before = inventory(solo.images_dir)
    assert images.skip_criu_network_lock(working)
    after = inventory(working)
    assert before["network_lock_method"] in (0, 1)  # iptables or nftables, as dumped
    assert after["network_lock_method"] == 2  # CRIU's NETWORK_LOCK_SKIP
    assert {k: v for k, v in after.items() if k != "network_lock_method"} == {
        k: v for k, v in before.items() if k != "network_lock_method"
    }
    assert inventory(solo.images_dir) == before
    inode = (working / "inventory.img").stat().st_ino
    assert not images.skip_criu_network_lock(working)
    assert (working / "inventory.img").stat().st_ino == inode


def test_tcp_endpoints_plugin_rewrites_the_rank_working_copy(solo: Solo, tmp_path: Path) -> None:
    """The built-in tcp-endpoints plugin rewrites the working copy named by the restart context
    with its address map before the restore, and does nothing with an empty map."""
    working = tmp_path / "rank-0"
    images.make_working_copy(solo.images_dir, working)
    plugin = TcpEndpoints()
    assert plugin.name == "tcp-endpoints"

    asyncio.run(plugin.before_restore(restart_context(working, {})))
    assert images.inspect(working).sockets == images.inspect(solo.images_dir).sockets

    asyncio.run(plugin.before_restore(restart_context(working, {"198.19.0.51": "198.19.0.61"})))
    locals_after = {s.local.address for s in images.inspect(working).sockets}
    assert "198.19.0.61" in locals_after and "::ffff:198.19.0.61" in locals_after
    assert "198.19.0.51" not in locals_after and "::ffff:198.19.0.51" not in locals_after


def test_host_files_plugin_refuses_a_file_the_rank_holds_open(solo: Solo, tmp_path: Path) -> None:
    """host-files fails closed, naming the file, when the dumped rank holds a listed file open
    (CRIU checks its recorded size at restore), and leaves the file unchanged."""
    working = tmp_path / "rank-0"
    images.make_working_copy(solo.images_dir, working)
    content = solo.data_file.read_bytes()
    context = restart_context(
        working, {"198.19.0.50": "198.19.0.60"}, rewrite_files=str(solo.data_file)
    )

    with pytest.raises(PluginError, match=re.escape(str(solo.data_file))) as caught:
        asyncio.run(HostFiles().before_restore(context))

    assert "holds it open" in str(caught.value)
    assert solo.data_file.read_bytes() == content


def restart_context(
    working: Path, address_map: Mapping[str, str], **options: str
) -> RestartContext:
    return RestartContext(
        job="job-1",
        checkpoint="ck-1",
        rank=0,
        old_host="a",
        new_host="b",
        moves={},
        address_map=address_map,
        images_dir=working,
        options=options,
    )


def test_rewrite_refuses_missing_or_corrupt_images(solo: Solo, tmp_path: Path) -> None:
    """A missing or truncated files.img, an existing target or a bad map is refused with an
    error naming the problem, and no target is left behind."""
    broken = tmp_path / "broken"
    shutil.copytree(solo.images_dir, broken)
    raw = (broken / "files.img").read_bytes()
    (broken / "files.img").write_bytes(raw[: len(raw) - 7])
    with pytest.raises(images.ImageError, match=r"files\.img") as caught:
        images.make_working_copy(broken, tmp_path / "out")
    assert caught.value.path == broken / "files.img"
    assert "path=" in str(caught.value)
    with pytest.raises(images.ImageError, match=r"files\.img"):
        images.rewrite_socket_addresses(broken, {"198.19.0.50": "198.19.0.60"})
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.glob(".out.partial-*")) == []

    (broken / "files.img").unlink()
    with pytest.raises(images.ImageError, match=r"files\.img is missing"):
        images.inspect(broken)
    with pytest.raises(images.ImageError, match="not a CRIU images folder"):
        images.inspect(tmp_path)
    with pytest.raises(images.ImageError, match="already exists"):
        images.make_working_copy(solo.images_dir, tmp_path)
    copy = tmp_path / "copy"
    images.make_working_copy(solo.images_dir, copy)
    with pytest.raises(images.AddressMapError, match="IPv4 address cannot become IPv6"):
        images.rewrite_socket_addresses(copy, {"198.19.0.50": "::1"})
    with pytest.raises(images.AddressMapError):
        images.rewrite_socket_addresses(copy, {"not-an-address": "::1"})
    assert images.verify(copy, images.digest_files(solo.images_dir)) == []


def test_manifest_verify_reports_missing_resized_changed_and_extra_files(
    solo: Solo, tmp_path: Path
) -> None:
    """digest_files lists every file with size and digest; verify names what differs."""
    copy = tmp_path / "copy"
    shutil.copytree(solo.images_dir, copy)
    manifest = images.digest_files(copy)
    assert [d.path for d in manifest] == sorted(p.name for p in copy.iterdir())
    assert images.verify(copy, manifest) == []

    pages = next(d for d in manifest if d.path.startswith("pages-"))
    with (copy / pages.path).open("r+b") as f:
        f.seek(pages.size // 2)
        byte = f.read(1)
        f.seek(pages.size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    (copy / "pstree.img").unlink()
    with (copy / "inventory.img").open("ab") as f:
        f.write(b"\0")
    (copy / "restore.log").write_text("later\n")

    problems = {(p.path, p.kind) for p in images.verify(copy, manifest, allow_extra=False)}
    assert problems == {
        (pages.path, "digest"),
        ("pstree.img", "missing"),
        ("inventory.img", "size"),
        ("restore.log", "extra"),
    }


# -- (c): a live TCP pair moves from hosts A, B to hosts C, D ------------------------------


def lock(namespace: str, summary: images.ImageSummary) -> None:
    """Drop the job's connections on a host while it restores (FINDINGS 11)."""
    rules = [
        f"add table inet {LOCK_TABLE}",
        f"add chain inet {LOCK_TABLE} input {{ type filter hook input priority -300 ; }}",
        f"add chain inet {LOCK_TABLE} output {{ type filter hook output priority -300 ; }}",
    ]
    for s in summary.sockets:
        if s.proto != "tcp" or s.peer is None:
            continue
        ip = "ip6" if s.family == "ipv6" else "ip"
        local, peer = s.local, s.peer
        rules += [
            f"add rule inet {LOCK_TABLE} input {ip} saddr {peer.address} {ip} daddr "
            f"{local.address} tcp sport {peer.port} tcp dport {local.port} counter drop",
            f"add rule inet {LOCK_TABLE} output {ip} saddr {local.address} {ip} daddr "
            f"{peer.address} tcp sport {local.port} tcp dport {peer.port} counter drop",
        ]
    subprocess.run(
        in_ns(namespace, "nft", "-f", "-"), input="\n".join(rules) + "\n", text=True,
        check=True, capture_output=True,
    )  # fmt: skip


def unlock(namespace: str) -> int:
    """Remove the lock; the number of packets it dropped."""
    listing = run(*in_ns(namespace, "nft", "list", "table", "inet", LOCK_TABLE))
    run(*in_ns(namespace, "nft", "delete", "table", "inet", LOCK_TABLE))
    return sum(int(n) for n in re.findall(r"counter packets (\d+)", listing))


def tcp_sockets(pid: int) -> set[tuple[str, str, str]]:
    """(local, peer, state) of the IPv4 TCP sockets in ``pid``'s network namespace."""
    states = {"01": "established", "0A": "listen"}
    found = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()

        def endpoint(text: str) -> str:
            address, port = text.split(":")
            return f"{ipaddress.IPv4Address(bytes.fromhex(address)[::-1])}:{int(port, 16)}"

        found.add((endpoint(fields[1]), endpoint(fields[2]), states.get(fields[3], fields[3])))
    return found


def test_tcp_pair_continues_on_new_hosts_after_rewrite(lab: Lab) -> None:
    """A client (B) and server (A) dumped with --tcp-established, rewritten a->c and b->d and
    restored on C and D (locked with nft during the restore, CRIU's own lock skipped, both held
    at post-restore, unlocked, then released) keep exchanging, every reply checked, over
    sockets that now carry the new addresses."""
    a, b, c, d = (HOSTS[h] for h in "abcd")
    lab.bridge()
    for host in "abcd":
        lab.host(host)
    server_pid, server_status = lab.start("crimg-a", "server", "server", a, str(PORT))
    client_pid, client_status = lab.start("crimg-b", "client", "client", a, str(PORT), b)
    wait_for(lambda: (s := read_status(client_status)) and s.n >= 50, 15, "the pair exchanging")

    # Dump both ends at once (kill mode); CRIU's lock keeps the dead ends silent.
    image_a, image_b = lab.root / "img-a", lab.root / "img-b"
    dumps = [dump(lab, "crimg-a", server_pid, image_a), dump(lab, "crimg-b", client_pid, image_b)]
    finish(dumps[0], image_a / "dump.log", "criu dump of the server")
    finish(dumps[1], image_b / "dump.log", "criu dump of the client")
    at_dump = {"server": status(server_status), "client": status(client_status)}
    assert all(s.errors == 0 for s in at_dump.values()), at_dump
    lab.drop_host("a")
    lab.drop_host("b")

    dumped_client = next(s for s in images.inspect(image_b).sockets if s.state == "established")
    assert str(dumped_client.peer) == f"{a}:{PORT}" and dumped_client.local.address == b
    client_port = dumped_client.local.port

    # Rewrite both ends with the same map; the new hosts must hold the files at dumped sizes.
    address_map = {a: c, b: d}
    image_c, image_d = lab.root / "img-c", lab.root / "img-d"
    images.make_working_copy(image_a, image_c)
    images.make_working_copy(image_b, image_d)
    report_c = images.rewrite_socket_addresses(image_c, address_map)
    report_d = images.rewrite_socket_addresses(image_d, address_map)
    assert dict(report_c.endpoints) == {(a, c): 2, (b, d): 1}  # listener, accepted socket
    assert dict(report_d.endpoints) == {(b, d): 1, (a, c): 1}
    summary_c, summary_d = images.inspect(image_c), images.inspect(image_d)
    assert images.verify_regular_files(summary_c) == []
    assert images.verify_regular_files(summary_d) == []

    # Lock both new hosts, restore both held at post-restore, unlock both, release both.
    lock("crimg-c", summary_c)
    lock("crimg-d", summary_d)
    restores = {}
    for host, image_dir in (("c", image_c), ("d", image_d)):
        hold_dir = lab.root / f"hold-{host}"
        hold_dir.mkdir()
        restores[host] = (
            lab.popen(
                in_ns(f"crimg-{host}", lab.criu, "restore", "-D", str(image_dir), "-d",
                       "--tcp-established", "--network-lock", "skip",
                       "--action-script", str(lab.hold_script), "-v4", "-o", "restore.log"),
                env={**os.environ, "HOLD_DIR": str(hold_dir)},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ),
            hold_dir,
            image_dir / "restore.log",
        )  # fmt: skip
    restored = {}
    for host, (proc, hold_dir, log) in restores.items():

        def reached(proc: subprocess.Popen[bytes] = proc, hold_dir: Path = hold_dir) -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"criu restore exited {proc.returncode} early")
            return (hold_dir / "reached").exists()

        try:
            wait_for(reached, 30, f"the restore on {host} to reach post-restore")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{criu_errors(log)}") from None
        restored[host] = int((hold_dir / "reached").read_text())
        lab.pin(restored[host])
    dropped = unlock("crimg-c") + unlock("crimg-d")
    for _, hold_dir, _ in restores.values():
        (hold_dir / "go").write_text("release\n")
    released = time.monotonic()
    for host, (proc, _, log) in restores.items():
        finish(proc, log, f"criu restore on {host}")

    # The stream continues from where it was dumped, every reply right.
    def progressed(path: Path, since: int, by: int) -> Status | None:
        s = read_status(path)
        return s if s and s.n >= since + by else None

    wait_for(
        lambda: progressed(client_status, at_dump["client"].n, 1), 10, "the client's first reply"
    )
    first_progress = time.monotonic() - released
    client_after = wait_for(
        lambda: progressed(client_status, at_dump["client"].n, 200), 20, "200 more exchanges"
    )
    server_after = status(server_status)
    assert (client_after.errors, client_after.note) == (0, "ok"), client_after
    assert (server_after.errors, server_after.note) == (0, "ok"), server_after
    assert server_after.n >= at_dump["server"].n + 200

    # The restored sockets carry the new addresses and the dumped ports.
    connection = (f"{c}:{PORT}", f"{d}:{client_port}", "established")
    assert connection in tcp_sockets(restored["c"])
    assert (f"{c}:{PORT}", "0.0.0.0:0", "listen") in tcp_sockets(restored["c"])
    assert (f"{d}:{client_port}", f"{c}:{PORT}", "established") in tcp_sockets(restored["d"])
    print(
        f"\nrestored on C/D: first reply {first_progress * 1000:.0f} ms after release, "
        f"{client_after.n - at_dump['client'].n} exchanges since the dump, 0 errors; "
        f"lock dropped {dropped} packets; rewrite {report_c.seconds * 1000:.1f} ms + "
        f"{report_d.seconds * 1000:.1f} ms"
    )
