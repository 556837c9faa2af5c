"""Restart planning: where ranks go, how addresses map, and every clash refused up front."""

from __future__ import annotations

import re

import pytest

from coordinator.placement import connected_ranks, plan_restart
from crctl.errors import ConfigError, ConflictError
from crctl.v1 import control_pb2

ADDRESSES = {f"h{i}": [f"198.18.0.{10 + i}"] for i in range(1, 7)}


def ring_images(hosts: list[str], base_port: int = 7100) -> list[control_pb2.RankImage]:
    """A ring: rank i on hosts[i] listens on base+i and connects to rank i+1."""
    images = []
    n = len(hosts)
    for rank, host in enumerate(hosts):
        addr = ADDRESSES[host][0]
        succ = (rank + 1) % n
        pred = (rank - 1) % n
        image = control_pb2.RankImage(rank=rank, host=host, host_addresses=[addr])
        image.sockets.add(
            proto="tcp", state="listen", local_address=addr, local_port=base_port + rank
        )
        image.sockets.add(
            proto="tcp",
            state="established",
            local_address=addr,
            local_port=40000 + rank,
            peer_address=ADDRESSES[hosts[succ]][0],
            peer_port=base_port + succ,
        )
        image.sockets.add(
            proto="tcp",
            state="established",
            local_address=addr,
            local_port=base_port + rank,
            peer_address=ADDRESSES[hosts[pred]][0],
            peer_port=40000 + pred,
        )
        images.append(image)
    return images


def test_an_explicit_map_moves_ranks_and_their_addresses() -> None:
    plan = plan_restart(
        ring_images(["h1", "h2", "h3"]),
        host_map={"h1": "h4", "h2": "h5", "h3": "h6"},
        hosts=[],
        addresses=ADDRESSES,
    )
    assert plan.rank_hosts == {0: "h4", 1: "h5", 2: "h6"}
    assert plan.address_map == {
        "198.18.0.11": "198.18.0.14",
        "198.18.0.12": "198.18.0.15",
        "198.18.0.13": "198.18.0.16",
    }
    assert plan.hosts == ["h4", "h5", "h6"]
    assert plan.close == {}


def test_no_map_restarts_in_place_with_no_rewriting() -> None:
    plan = plan_restart(ring_images(["h1", "h2"]), host_map={}, hosts=[], addresses=ADDRESSES)
    assert plan.rank_hosts == {0: "h1", 1: "h2"}
    assert plan.address_map == {}


def test_unlisted_hosts_stay_where_they_were() -> None:
    plan = plan_restart(
        ring_images(["h1", "h2"]), host_map={"h2": "h5"}, hosts=[], addresses=ADDRESSES
    )
    assert plan.rank_hosts == {0: "h1", 1: "h5"}
    assert plan.address_map == {"198.18.0.12": "198.18.0.15"}


def test_a_host_list_assigns_in_rank_order_and_packs_when_short() -> None:
    plan = plan_restart(
        ring_images(["h1", "h2", "h3"]), host_map={}, hosts=["h4", "h5"], addresses=ADDRESSES
    )
    assert plan.rank_hosts == {0: "h4", 1: "h5", 2: "h4"}
    assert plan.address_map["198.18.0.13"] == "198.18.0.14"


def test_two_ranks_listening_on_one_port_cannot_share_a_host() -> None:
    images = ring_images(["h1", "h2"], base_port=7100)
    images[1].sockets[0].local_port = 7100  # both listen on 7100
    with pytest.raises(ConflictError, match="ranks 0 and 1 both listen on port 7100"):
        plan_restart(images, host_map={"h1": "h4", "h2": "h4"}, hosts=[], addresses=ADDRESSES)


def test_ranks_of_one_old_host_cannot_be_split() -> None:
    images = ring_images(["h1", "h2"])
    images[1].host = "h1"
    with pytest.raises(ConflictError, match="would be split across h4 and h5"):
        plan_restart(images, host_map={}, hosts=["h4", "h5"], addresses=ADDRESSES)


def test_a_socket_bound_to_a_foreign_address_cannot_move() -> None:
    images = ring_images(["h1"])
    images[0].sockets[0].local_address = "10.9.9.9"
    with pytest.raises(
        ConflictError, match=re.escape("bound to 10.9.9.9, which is not an address of h1")
    ):
        plan_restart(images, host_map={"h1": "h4"}, hosts=[], addresses=ADDRESSES)


def test_connections_outside_the_job_are_planned_closed() -> None:
    images = ring_images(["h1", "h2"])
    images[0].sockets.add(
        proto="tcp",
        state="established",
        local_address="198.18.0.11",
        local_port=45000,
        peer_address="198.18.0.1",
        peer_port=5432,
    )
    plan = plan_restart(images, host_map={"h1": "h4"}, hosts=[], addresses=ADDRESSES)
    assert plan.close == {0: ["198.18.0.11:45000>198.18.0.1:5432"]}


@pytest.mark.parametrize(
    ("host_map", "hosts", "error", "message"),
    [
        ({"h9": "h4"}, [], ConfigError, "--map names h9, which ran no rank"),
        ({"h1": "h99"}, [], ConfigError, "unknown host h99"),
        ({"h1": "h4"}, ["h5"], ConfigError, "either --map or --hosts"),
    ],
)
def test_malformed_requests_are_refused_with_the_reason(
    host_map: dict[str, str], hosts: list[str], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        plan_restart(ring_images(["h1", "h2"]), host_map=host_map, hosts=hosts, addresses=ADDRESSES)


def dual_stack_pair() -> list[control_pb2.RankImage]:
    """Rank 0 on h1 connected over IPv4 to rank 1 on h2, which listens on "::" (dual stack):
    rank 1's socket sees both ends as IPv4-mapped IPv6 addresses."""
    client = control_pb2.RankImage(rank=0, host="h1", host_addresses=ADDRESSES["h1"])
    client.sockets.add(
        proto="tcp",
        state="established",
        local_address="198.18.0.11",
        local_port=40000,
        peer_address="198.18.0.12",
        peer_port=7100,
    )
    server = control_pb2.RankImage(rank=1, host="h2", host_addresses=ADDRESSES["h2"])
    server.sockets.add(proto="tcp", state="listen", local_address="::", local_port=7100)
    server.sockets.add(
        proto="tcp",
        state="established",
        local_address="::ffff:198.18.0.12",
        local_port=7100,
        peer_address="::ffff:198.18.0.11",
        peer_port=40000,
    )
    return [client, server]


def test_a_dual_stack_listeners_connection_inside_the_job_stays_open() -> None:
    plan = plan_restart(dual_stack_pair(), host_map={}, hosts=[], addresses=ADDRESSES)
    assert plan.close == {}


def test_a_dual_stack_listeners_connection_moves_with_its_ranks() -> None:
    plan = plan_restart(dual_stack_pair(), host_map={"h2": "h5"}, hosts=[], addresses=ADDRESSES)
    assert plan.rank_hosts == {0: "h1", 1: "h5"}
    assert plan.address_map == {"198.18.0.12": "198.18.0.15"}
    assert plan.close == {}


def test_the_ranks_at_both_ends_of_a_dual_stack_connection_find_each_other() -> None:
    images = dual_stack_pair()
    assert [i.rank for i in connected_ranks(images, [0])] == [1]
    assert [i.rank for i in connected_ranks(images, [1])] == [0]
