"""A restart's rewrite of one rank's images, as an agent does it (working copy, bytes in flight
handed over, sockets rewritten by the plan), on image folders in CRIU's format: ranks that
shared a host and now run apart still meet at both ends of every connection, and the bytes in
flight between them reach their receiver, whether the ranks are split or stay together."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from agent import images
from coordinator.placement import Placement, plan_restart
from crctl.v1 import control_pb2
from tests.unit.criu_images import Socket, Stream, write_images

H1, H2 = "198.18.0.11", "198.18.0.12"
ADDRESSES = {f"h{i}": [f"198.18.0.{10 + i}"] for i in range(1, 6)}
TOKEN = b"0123456789abcdef"
TOKEN_2 = b"fedcba9876543210"

# Ranks 0 and 1 on h1, rank 2 on h2: a ring (0 -> 1 -> 2 -> 0); rank 0 listens dual stack, so
# its end of 2 -> 0 holds IPv4-mapped addresses; TOKEN, sent by rank 0, never reached rank 1;
# TOKEN_2, sent by rank 2, never reached rank 0 (at its IPv4-mapped end).
JOB: dict[int, tuple[str, list[Socket]]] = {
    0: (
        "h1",
        [
            Socket(("::", 7100)),
            Socket((H1, 40000), (H1, 7101), Stream(first_unacked=1000, sent=TOKEN, expects=5000)),
            Socket(
                (f"::ffff:{H1}", 7100),
                (f"::ffff:{H2}", 40002),
                Stream(first_unacked=7000, expects=3000),
            ),
        ],
    ),
    1: (
        "h1",
        [
            Socket((H1, 7101)),
            Socket((H1, 7101), (H1, 40000), Stream(first_unacked=5000, expects=1000)),
            Socket((H1, 40001), (H2, 7102)),
        ],
    ),
    2: (
        "h2",
        [
            Socket((H2, 7102)),
            Socket((H2, 40002), (H1, 7100), Stream(first_unacked=3000, sent=TOKEN_2, expects=7000)),
            Socket((H2, 7102), (H1, 40001)),
        ],
    ),
}


def manifest() -> list[control_pb2.RankImage]:
    ranks = []
    for rank, (host, sockets) in JOB.items():
        image = control_pb2.RankImage(rank=rank, host=host, host_addresses=ADDRESSES[host])
        for s in sockets:
            image.sockets.add(
                proto="tcp",
                state="listen" if s.peer is None else "established",
                local_address=s.local[0],
                local_port=s.local[1],
                peer_address=s.peer[0] if s.peer else "",
                peer_port=s.peer[1] if s.peer else 0,
            )
        ranks.append(image)
    return ranks


def restore_everywhere(tmp_path: Path, plan: Placement) -> dict[int, Path]:
    """Every rank's working copy as its new host's agent makes it (agent.restoring)."""
    originals = {
        r: write_images(tmp_path / "checkpoint" / f"rank-{r}", s) for r, (_, s) in JOB.items()
    }
    ends = images.connection_ends({originals[r]: host for r, (host, _) in JOB.items()})
    working = {}
    for rank, original in originals.items():
        copy = tmp_path / plan.rank_hosts[rank] / f"rank-{rank}"
        images.make_working_copy(original, copy)
        images.hand_over_in_flight(copy, original, ends)
        images.rewrite_socket_addresses(
            copy,
            plan.address_map,
            local_map=plan.rank_addresses.get(rank, {}),
            peer_map=plan.peer_addresses.get(rank, {}),
        )
        working[rank] = copy
    return working


def plain(address: str) -> str:
    parsed = ipaddress.ip_address(address)
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(parsed)


def wire(sock: images.InetSocket) -> tuple[tuple[str, int], tuple[str, int]]:
    assert sock.peer is not None
    return (plain(sock.local.address), sock.local.port), (plain(sock.peer.address), sock.peer.port)


@pytest.mark.parametrize(
    ("hosts", "split"), [(["h3", "h4", "h5"], {"h1": ["h3", "h4"]}), (["h3", "h3", "h5"], {})]
)
def test_every_connection_meets_at_its_ranks_new_hosts_with_nothing_in_flight(
    tmp_path: Path, hosts: list[str], split: dict[str, list[str]]
) -> None:
    plan = plan_restart(manifest(), host_map={}, hosts=hosts, addresses=ADDRESSES)
    assert plan.split_hosts == split

    working = restore_everywhere(tmp_path, plan)

    connected = {
        rank: [s for s in images.inspect(copy).sockets if s.peer is not None]
        for rank, copy in working.items()
    }
    ends = {wire(s): rank for rank, socks in connected.items() for s in socks}
    for rank, socks in connected.items():
        new_address = ADDRESSES[plan.rank_hosts[rank]][0]
        for sock in socks:
            (local, port), (peer, peer_port) = wire(sock)
            assert local == new_address
            far = ends.get(((peer, peer_port), (local, port)))
            assert far is not None and far != rank, f"rank {rank}'s {sock.local}>{sock.peer}"
            assert peer == ADDRESSES[plan.rank_hosts[far]][0]
    # The dual-stack end keeps its form.
    assert {str(s.peer) for s in connected[0] if s.family == "ipv6"} == {
        f"[::ffff:{ADDRESSES[hosts[2]][0]}]:40002"
    }
    # TOKEN, dropped by the checkpoint's lock, is in rank 1's queue; rank 0 sent it.
    received = images.inspect(working[1])
    stream = next(s for s in received.sockets if s.local.port == 7101 and s.peer is not None)
    assert (working[1] / f"tcp-stream-{stream.ino:x}.img").read_bytes().endswith(TOKEN)
    sender = next(s for s in images.inspect(working[0]).sockets if s.local.port == 40000)
    assert not (working[0] / f"tcp-stream-{sender.ino:x}.img").read_bytes().endswith(TOKEN)
    # TOKEN_2 reached rank 0's dual-stack end, whose peer it names as ::ffff:a.b.c.d.
    mapped = next(s for s in connected[0] if s.family == "ipv6")
    assert (working[0] / f"tcp-stream-{mapped.ino:x}.img").read_bytes().endswith(TOKEN_2)


def test_equal_loopback_connections_on_two_hosts_hand_over_each_host_s_own_bytes(
    tmp_path: Path,
) -> None:
    """Ranks 0 and 1 on h1, 2 and 3 on h2, each pair talking over 127.0.0.1 with the same
    ports: the same endpoints, two connections; each receiver gets what its own host's sender
    had in flight."""
    sent = {0: b"from h1's rank 0", 2: b"from h2's rank 2"}
    folders = {}
    for sender, host in ((0, "h1"), (2, "h2")):
        pair = {
            sender: [
                Socket(
                    ("127.0.0.1", 6000),
                    ("127.0.0.1", 50000),
                    Stream(first_unacked=100, sent=sent[sender], expects=900),
                )
            ],
            sender + 1: [
                Socket(("127.0.0.1", 50000), ("127.0.0.1", 6000), Stream(900, expects=100))
            ],
        }
        for rank, sockets in pair.items():
            folders[write_images(tmp_path / "checkpoint" / f"rank-{rank}", sockets)] = host
    ends = images.connection_ends(folders)
    for original in folders:
        copy = tmp_path / "working" / original.name
        images.make_working_copy(original, copy)
        images.hand_over_in_flight(copy, original, ends)
    for sender, receiver in ((0, 1), (2, 3)):
        folder = tmp_path / "working" / f"rank-{receiver}"
        (sock,) = images.inspect(folder).sockets
        assert (folder / f"tcp-stream-{sock.ino:x}.img").read_bytes().endswith(sent[sender])


def test_a_peer_map_naming_an_address_of_another_family_is_refused(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "rank-0", JOB[0][1])
    with pytest.raises(
        images.AddressMapError, match=re.escape("the peer 198.18.0.11 cannot become fd00::1")
    ):
        images.rewrite_socket_addresses(folder, {}, peer_map={f"{H1}:40000>{H1}:7101": "fd00::1"})
