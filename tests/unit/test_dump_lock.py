"""The checkpoint's own lock of the ranks' connections: the connections of a process found from
/proc, and the refusal of a dump that holds a connection the lock did not cover."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from agent import netlock
from agent.checkpointing import HostCheckpoint
from crctl.errors import CrctlError
from crctl.v1 import control_pb2


def test_task_connections_lists_both_ends_and_plain_ipv4_for_dual_stack_sockets() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True) as dual,
    ):
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        client6 = socket.create_connection(("127.0.0.1", dual.getsockname()[1]))
        server6, _ = dual.accept()
        try:
            found = set(netlock.task_connections([os.getpid()]))
            for sock in (client, server, client6, server6):
                local, peer = sock.getsockname(), sock.getpeername()
                expected = netlock.Connection(
                    netlock.wire_address(local[0]),
                    local[1],
                    netlock.wire_address(peer[0]),
                    peer[1],
                )
                assert expected in found
            assert all(":" not in c.local for c in found), "IPv4-mapped shown as IPv4"
            assert not any(
                c.local_port == listener.getsockname()[1] and c.peer_port == 0 for c in found
            ), "listening sockets are not connections"
        finally:
            for sock in (client, server, client6, server6):
                sock.close()


def held(sockets: list[control_pb2.SocketInfo], locked: set[netlock.Connection]) -> HostCheckpoint:
    checkpoint = HostCheckpoint(
        job="j",
        checkpoint="ckpt-1",
        images_dir=Path("/nonexistent"),
        leave_running=True,
        ranks={},
        host="h1",
    )
    checkpoint._sockets = {0: sockets}
    checkpoint._locked = frozenset(locked)
    return checkpoint


def tcp(
    local: str, lport: int, peer: str, pport: int, state: str = "established"
) -> control_pb2.SocketInfo:
    return control_pb2.SocketInfo(
        family="ipv4",
        state=state,
        proto="tcp",
        local_address=local,
        local_port=lport,
        peer_address=peer,
        peer_port=pport,
    )


def test_a_dump_whose_connections_were_all_locked_passes() -> None:
    held(
        [
            tcp("::ffff:10.0.0.1", 7000, "::ffff:10.0.0.2", 40000),  # dual-stack: wire is IPv4
            tcp("10.0.0.1", 7000, "", 0, state="listen"),
        ],
        {netlock.Connection("10.0.0.1", 7000, "10.0.0.2", 40000)},
    )._check_locked()


def test_a_dump_holding_an_unlocked_connection_is_refused_naming_it() -> None:
    checkpoint = held(
        [tcp("10.0.0.1", 7000, "10.0.0.2", 40000), tcp("10.0.0.1", 7001, "10.0.0.3", 40001)],
        {netlock.Connection("10.0.0.1", 7000, "10.0.0.2", 40000)},
    )
    with pytest.raises(CrctlError, match=r"10\.0\.0\.1:7001 -> 10\.0\.0\.3:40001 .*without"):
        checkpoint._check_locked()
