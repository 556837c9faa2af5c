"""The restore lock through libnftables (agent.netlock), on real nftables in a network namespace
of its own: a locked connection carries nothing, an opened lock lets the very same connection
go on (TCP retransmits what was dropped), and the table is gone after its removal."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from testbed import netns

pytestmark = pytest.mark.e2e

SCENARIO = textwrap.dedent(
    """
    import socket, time
    from agent import netlock

    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    server.settimeout(0.5)
    table = "crctl-test-lock"
    local, peer = client.getsockname(), client.getpeername()
    netlock.lock_connections(
        table, [netlock.Connection(local[0], local[1], peer[0], peer[1])]
    )
    assert netlock.table_exists(table)
    client.sendall(b"while locked")
    try:
        got = server.recv(100)
    except TimeoutError:
        got = b""
    assert got == b"", f"data passed the lock: {got!r}"
    netlock.open_lock(table)
    server.settimeout(5)
    assert server.recv(100) == b"while locked"  # retransmitted once the lock opened
    client.sendall(b"after")
    assert server.recv(100) == b"after"
    assert netlock.remove_table(table)
    assert not netlock.table_exists(table)
    assert not netlock.remove_table(table)
    print("ok")
    """
)


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"crctl-netlock-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        netns.delete_namespace(name)


CONNECTING = textwrap.dedent(
    """
    import os, socket
    from agent import netlock
    from crctl import nftables

    # SYNs to port 9 vanish: the connect stays in SYN_SENT, with no peer getpeername can give.
    rules = ["table inet t {", "chain c {", "type filter hook input priority 0;"]
    nftables.run(chr(10).join([*rules, "tcp dport 9 drop", "}", "}"]))
    sock = socket.socket()
    sock.setblocking(False)
    assert sock.connect_ex(("127.0.0.1", 9)) != 0
    local = sock.getsockname()
    found = netlock.task_connections([os.getpid()])
    assert found == [netlock.Connection("127.0.0.1", local[1], "127.0.0.1", 9)], found
    print("ok")
    """
)


def run_in(namespace: str, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*netns.nsenter_prefix(namespace), sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_connect_in_progress_is_found_with_its_destination(namespace: str) -> None:
    """CRIU dumps a connecting socket with its destination, so the lock must cover it too."""
    result = run_in(namespace, CONNECTING)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "ok"


def test_a_locked_connection_stalls_and_goes_on_once_the_lock_opens(namespace: str) -> None:
    result = run_in(namespace, SCENARIO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "ok"
