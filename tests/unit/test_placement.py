"""Restart planning: where ranks go, how addresses map, and every clash refused up front."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from coordinator.placement import Placement, connected_ranks, plan_restart
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


def spread_ring() -> list[control_pb2.RankImage]:
    """A ring of 3 whose ranks 0 and 1 share h1 (0 -> 1 over h1's address) and rank 2 is on
    h2: restarted on --hosts h3,h4,h5, h1's ranks are split."""
    return ring_images(["h1", "h1", "h2"])


def spread(images: list[control_pb2.RankImage], hosts: list[str]) -> Placement:
    return plan_restart(images, host_map={}, hosts=hosts, addresses=ADDRESSES)


def test_the_ranks_of_one_old_host_may_go_to_several_new_hosts() -> None:
    plan = spread(spread_ring(), ["h3", "h4", "h5"])
    assert plan.rank_hosts == {0: "h3", 1: "h4", 2: "h5"}
    assert plan.split_hosts == {"h1": ["h3", "h4"]}
    # The per-address map holds only what has one new address: h2, whose one rank went to h5.
    assert plan.host_map == {"h2": "h5"}
    assert plan.address_map == {"198.18.0.12": "198.18.0.15"}
    assert plan.rank_addresses == {
        0: {"198.18.0.11": "198.18.0.13"},
        1: {"198.18.0.11": "198.18.0.14"},
    }
    # Each connection to a rank of h1 gets the address of that rank's new host.
    assert plan.peer_addresses == {
        0: {"198.18.0.11:40000>198.18.0.11:7101": "198.18.0.14"},  # to rank 1, now on h4
        1: {"198.18.0.11:7101>198.18.0.11:40000": "198.18.0.13"},  # from rank 0, now on h3
        2: {
            "198.18.0.12:40002>198.18.0.11:7100": "198.18.0.13",  # to rank 0
            "198.18.0.12:7102>198.18.0.11:40001": "198.18.0.14",  # from rank 1
        },
    }
    assert plan.close == {}


def test_a_rank_of_a_split_host_that_stays_keeps_its_address() -> None:
    plan = plan_restart(spread_ring(), host_map={}, hosts=["h1", "h4", "h2"], addresses=ADDRESSES)
    assert plan.split_hosts == {"h1": ["h1", "h4"]}
    assert plan.host_map == {"h2": "h2"} and plan.address_map == {}
    assert plan.rank_addresses == {1: {"198.18.0.11": "198.18.0.14"}}
    assert plan.peer_addresses == {
        0: {"198.18.0.11:40000>198.18.0.11:7101": "198.18.0.14"},
        2: {"198.18.0.12:7102>198.18.0.11:40001": "198.18.0.14"},
    }


def test_ranks_of_a_host_using_one_local_port_towards_different_peers_are_told_apart() -> None:
    """The kernel gives two sockets one ephemeral port when their peers differ: the far end of
    a connection is found by the connection, not by its address and port."""
    images = spread_ring()
    images[1].sockets[1].local_port = 40000  # rank 1 -> rank 2 from port 40000 too
    images[2].sockets[2].peer_port = 40000
    plan = spread(images, ["h3", "h4", "h5"])
    assert plan.peer_addresses[2] == {
        "198.18.0.12:40002>198.18.0.11:7100": "198.18.0.13",  # rank 0's port 7100
        "198.18.0.12:7102>198.18.0.11:40000": "198.18.0.14",  # rank 1's port 40000
    }
    assert plan.peer_addresses[1] == {"198.18.0.11:7101>198.18.0.11:40000": "198.18.0.13"}


def test_a_connection_not_yet_accepted_goes_to_its_listeners_new_host() -> None:
    images = spread_ring()
    images[2].sockets.add(
        proto="tcp",
        state="syn-sent",
        local_address="198.18.0.12",
        local_port=41000,
        peer_address="198.18.0.11",
        peer_port=7101,
    )
    plan = spread(images, ["h3", "h4", "h5"])
    assert plan.peer_addresses[2]["198.18.0.12:41000>198.18.0.11:7101"] == "198.18.0.14"


def test_packing_a_split_job_back_maps_every_host_again() -> None:
    images = ring_images(["h3", "h4", "h5", "h6"])
    plan = spread(images, ["h1", "h2"])
    assert plan.rank_hosts == {0: "h1", 1: "h2", 2: "h1", 3: "h2"}
    assert plan.split_hosts == {} and plan.peer_addresses == {} and plan.rank_addresses == {}
    assert plan.address_map == {
        "198.18.0.13": "198.18.0.11",
        "198.18.0.14": "198.18.0.12",
        "198.18.0.15": "198.18.0.11",
        "198.18.0.16": "198.18.0.12",
    }


def with_socket(images: list[control_pb2.RankImage], rank: int, **socket: object) -> None:
    images[rank].sockets.add(proto="tcp", **socket)  # type: ignore[arg-type]


def loopback_pair(images: list[control_pb2.RankImage]) -> None:
    with_socket(images, 0, state="listen", local_address="127.0.0.1", local_port=9000)
    with_socket(
        images,
        1,
        state="established",
        local_address="127.0.0.1",
        local_port=42000,
        peer_address="127.0.0.1",
        peer_port=9000,
    )


def unheld_endpoint(images: list[control_pb2.RankImage]) -> None:
    with_socket(
        images,
        2,
        state="established",
        local_address="198.18.0.12",
        local_port=42000,
        peer_address="198.18.0.11",
        peer_port=5432,
    )


def shared_listener(images: list[control_pb2.RankImage]) -> None:
    for rank in (0, 1):  # SO_REUSEPORT
        with_socket(images, rank, state="listen", local_address="0.0.0.0", local_port=9000)
    with_socket(
        images,
        2,
        state="syn-sent",
        local_address="198.18.0.12",
        local_port=42000,
        peer_address="198.18.0.11",
        peer_port=9000,
    )


@pytest.mark.parametrize(
    ("change", "hosts", "message"),
    [
        (
            loopback_pair,
            ["h3", "h4", "h5"],
            "ranks 1 and 0 of h1 are connected over loopback (127.0.0.1:42000>127.0.0.1:9000) "
            "but would run on h4 and h3: give them one host",
        ),
        (
            unheld_endpoint,
            ["h3", "h4", "h5"],
            "rank 2's connection 198.18.0.12:42000>198.18.0.11:5432 leads to 198.18.0.11:5432 on "
            "h1, which no rank of the job holds, so it has no new address: keep h1's ranks on "
            "one host (they would go to h3, h4)",
        ),
        (
            shared_listener,
            ["h3", "h4", "h5"],
            "ranks 0, 1 of h1 all listen on port 9000, which rank 2 connects to, but would run "
            "on h3, h4: give them one host",
        ),
        (
            lambda images: None,
            ["h3", "h7", "h5"],
            "h7 has no address of the family of 198.18.0.11 (rank 1, from h1, connected to "
            "rank 0): give the rank a host with an IPv4 address",
        ),
    ],
)
def test_a_split_that_cannot_work_is_refused_naming_ranks_and_hosts(
    change: Callable[[list[control_pb2.RankImage]], None], hosts: list[str], message: str
) -> None:
    images = spread_ring()
    change(images)
    with pytest.raises(ConflictError, match=re.escape(message)):
        plan_restart(images, host_map={}, hosts=hosts, addresses={**ADDRESSES, "h7": ["fd00::7"]})


def test_two_ranks_holding_one_connection_cannot_share_a_host() -> None:
    images = ring_images(["h1", "h2"])
    for rank in (0, 1):  # each to a server of its own host, from the same port
        with_socket(
            images,
            rank,
            state="established",
            local_address="127.0.0.1",
            local_port=42000,
            peer_address="127.0.0.1",
            peer_port=5432,
        )
    with pytest.raises(
        ConflictError,
        match=re.escape(
            "ranks 0 and 1 would both hold the connection 127.0.0.1:42000>127.0.0.1:5432 on h3"
        ),
    ):
        spread(images, ["h3"])


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
