"""Restart planning, as properties over generated jobs: each job is one that could have been
checkpointed (ranks on old hosts, each listening on a port of its own on its host, connected to
each other, to loopback and to peers outside the job, some through dual-stack listeners that see
their IPv4 peers as ``::ffff:a.b.c.d``), and the request is any map, host list and set of
registered hosts. The planner places every rank, maps addresses consistently, or refuses with
a crctl error, and never fails in any other way; once planned, the two ends of every
connection between ranks still meet, also when ranks that shared a host went to several."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from coordinator.placement import Placement, connected_ranks, connection_key, plan_restart
from crctl.errors import ConfigError, ConflictError
from crctl.v1 import control_pb2

PROPERTIES = settings(max_examples=200, deadline=None)
FIRST_PORT = 7000  # a host's ranks listen on 7000, 7001, ...: ranks of different hosts clash


def _family(address: str) -> int:
    return ipaddress.ip_address(address).version


def _plain(address: str) -> str:
    parsed = ipaddress.ip_address(address)
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return address


@st.composite
def host_addresses(draw: st.DrawFn, index: int, *, v4: bool | None = None) -> list[str]:
    """One to two addresses of each family a host has (at least one family)."""
    has_v4 = draw(st.booleans()) if v4 is None else v4
    has_v6 = draw(st.booleans()) if has_v4 else True
    addresses = []
    if has_v4:
        addresses += [f"10.{index}.0.{k}" for k in range(1, draw(st.integers(1, 2)) + 1)]
    if has_v6:
        addresses += [f"fd00:{index}::{k}" for k in range(1, draw(st.integers(1, 2)) + 1)]
    return addresses


Connection = tuple[int, control_pb2.SocketInfo, int, control_pb2.SocketInfo]


@dataclass
class Job:
    images: list[control_pb2.RankImage]
    addresses: dict[str, list[str]]  # old host -> its addresses
    external: dict[int, list[str]] = field(default_factory=dict)  # rank -> connections out
    peers: dict[int, set[int]] = field(default_factory=dict)  # rank -> ranks it is connected to
    # Both ends of every connection between ranks: (client, its socket, server, its socket).
    connections: list[Connection] = field(default_factory=list)
    # Pairs of different ranks connected over loopback (which only one host can carry).
    over_loopback: set[frozenset[int]] = field(default_factory=set)

    def image(self, rank: int) -> control_pb2.RankImage:
        return next(i for i in self.images if i.rank == rank)


@st.composite
def jobs(draw: st.DrawFn) -> Job:
    old_hosts = [f"h{i}" for i in range(1, draw(st.integers(1, 4)) + 1)]
    addresses = {host: draw(host_addresses(i)) for i, host in enumerate(old_hosts, 1)}
    placed = draw(st.lists(st.sampled_from(old_hosts), min_size=1, max_size=6))
    addresses = {host: listed for host, listed in addresses.items() if host in placed}
    images = []
    listeners: dict[int, tuple[str, int]] = {}  # rank -> (bound address, port)
    for rank, host in enumerate(placed):
        image = control_pb2.RankImage(rank=rank, host=host, host_addresses=addresses[host])
        port = FIRST_PORT + placed[:rank].count(host)
        bound = draw(st.sampled_from([*addresses[host], "0.0.0.0", "::", "127.0.0.1"]))
        image.sockets.add(proto="tcp", state="listen", local_address=bound, local_port=port)
        listeners[rank] = (bound, port)
        if draw(st.booleans()):  # not TCP: the planner leaves it alone, whatever its address
            image.sockets.add(proto="udp", state="close", local_address="192.0.2.99")
        images.append(image)
    job = Job(images=draw(st.permutations(images)), addresses=addresses)

    ranks = range(len(placed))
    pairs = draw(st.lists(st.tuples(st.sampled_from(ranks), st.sampled_from(ranks)), max_size=8))
    for ephemeral, (client, server) in enumerate(pairs, 40000):
        _connect(draw, job, client, server, listeners[server], ephemeral)
    for ephemeral, rank in enumerate(draw(st.lists(st.sampled_from(ranks), max_size=3)), 50000):
        image = job.image(rank)
        local = draw(st.sampled_from(image.host_addresses))
        peer = "192.0.2.1" if _family(local) == 4 else "2001:db8::1"
        state = draw(st.sampled_from(["established", "close_wait", "syn_sent"]))
        image.sockets.add(
            proto="tcp",
            state=state,
            local_address=local,
            local_port=ephemeral,
            peer_address=peer,
            peer_port=5432,
        )
        job.external.setdefault(rank, []).append(connection_key(local, ephemeral, peer, 5432))
    return job


def _connect(
    draw: st.DrawFn, job: Job, client: int, server: int, listener: tuple[str, int], port: int
) -> None:
    """``client`` connects from ``port`` to ``server``'s listener, if it can reach it."""
    bound, listen_port = listener
    near, far = job.image(client), job.image(server)
    same_host = near.host == far.host
    if bound == "127.0.0.1":
        if not same_host:
            return
        targets = ["127.0.0.1"]
    elif bound == "0.0.0.0":
        targets = [a for a in far.host_addresses if _family(a) == 4]
    elif bound == "::":  # dual stack: IPv4 clients too
        targets = list(far.host_addresses)
    else:
        targets = [bound]
    targets = [t for t in targets if _family(t) in {_family(a) for a in near.host_addresses}]
    if not targets:
        return
    target = draw(st.sampled_from(targets))
    local = (
        target
        if target == "127.0.0.1"
        else draw(
            st.sampled_from([a for a in near.host_addresses if _family(a) == _family(target)])
        )
    )
    near_end = near.sockets.add(
        proto="tcp",
        state="established",
        local_address=local,
        local_port=port,
        peer_address=target,
        peer_port=listen_port,
    )
    seen_local, seen_peer = target, local
    if bound == "::" and _family(target) == 4:  # a dual-stack socket's view of IPv4
        seen_local, seen_peer = f"::ffff:{target}", f"::ffff:{local}"
    far_end = far.sockets.add(
        proto="tcp",
        state="established",
        local_address=seen_local,
        local_port=listen_port,
        peer_address=seen_peer,
        peer_port=port,
    )
    job.connections.append((client, near_end, server, far_end))
    if client != server:
        job.peers.setdefault(client, set()).add(server)
        job.peers.setdefault(server, set()).add(client)
        if target == "127.0.0.1":
            job.over_loopback.add(frozenset((client, server)))


def _sorted(close: Mapping[int, Sequence[str]]) -> dict[int, list[str]]:
    return {rank: sorted(keys) for rank, keys in close.items()}


@PROPERTIES
@given(job=jobs())
def test_a_restart_in_place_keeps_every_rank_and_address(job: Job) -> None:
    plan = plan_restart(job.images, host_map={}, hosts=[], addresses=job.addresses)
    assert plan.rank_hosts == {image.rank: image.host for image in job.images}
    assert plan.address_map == {}
    assert _sorted(plan.close) == _sorted(job.external)


@PROPERTIES
@given(job=jobs(), data=st.data())
def test_hosts_moved_to_hosts_of_the_same_families_map_every_address(
    job: Job, data: st.DataObject
) -> None:
    old_hosts = sorted(job.addresses)
    moved = data.draw(st.lists(st.sampled_from(old_hosts), min_size=1, unique=True))
    host_map = {old: f"n{old}" for old in moved}
    addresses = dict(job.addresses)
    for old, new in host_map.items():  # as many addresses of each family, or more
        families = {_family(a) for a in job.addresses[old]}
        addresses[new] = data.draw(host_addresses(int(old[1:]) + 10, v4=4 in families))
        for version in families:
            assume(
                sum(_family(a) == version for a in addresses[new])
                >= sum(_family(a) == version for a in job.addresses[old])
            )

    plan = plan_restart(job.images, host_map=host_map, hosts=[], addresses=addresses)

    assert plan.rank_hosts == {i.rank: host_map.get(i.host, i.host) for i in job.images}
    moved_addresses = {a for old in moved for a in job.addresses[old]}
    assert set(plan.address_map) == moved_addresses
    assert len(set(plan.address_map.values())) == len(moved_addresses)
    _assert_consistent(plan, job, addresses)
    assert _sorted(plan.close) == _sorted(job.external)


@PROPERTIES
@given(job=jobs(), data=st.data())
def test_any_request_is_planned_consistently_or_refused_with_a_crctl_error(
    job: Job, data: st.DataObject
) -> None:
    old_hosts = sorted(job.addresses)
    targets = [*old_hosts, "n1", "n2", "n3", "unregistered"]
    given_ = data.draw(st.sampled_from(["map", "hosts", "both"]))
    host_map, hosts = {}, []
    if given_ != "hosts":
        host_map = data.draw(
            st.dictionaries(st.sampled_from([*old_hosts, "h9"]), st.sampled_from(targets))
        )
    if given_ != "map":
        hosts = data.draw(st.lists(st.sampled_from(targets), max_size=4))
    addresses = {
        host: data.draw(host_addresses(index))
        for index, host in enumerate(targets[:-1], 20)
        if data.draw(st.booleans())
    } | {host: job.addresses[host] for host in old_hosts if data.draw(st.booleans())}

    try:
        plan = plan_restart(job.images, host_map=host_map, hosts=hosts, addresses=addresses)
    except (ConfigError, ConflictError):
        return

    assert set(plan.rank_hosts) == {i.rank for i in job.images}
    for image in job.images:
        assert plan.rank_hosts[image.rank] in (hosts or [host_map.get(image.host, image.host)])
    _assert_consistent(plan, job, addresses)


def _assert_consistent(plan: Placement, job: Job, addresses: Mapping[str, Sequence[str]]) -> None:
    """Every rank on a registered host, with the ranks it shared a host with; every address
    mapped to one of its new host's, of its family; every bound address of a moved rank mapped;
    no port listened on twice on a host; only connections outside the job closed."""
    job_addresses = {a for listed in job.addresses.values() for a in listed}
    for image in job.images:
        new = plan.rank_hosts[image.rank]
        assert new in addresses
        if image.host in plan.split_hosts:
            assert image.host not in plan.host_map
            assert new in plan.split_hosts[image.host]
        else:
            assert plan.host_map[image.host] == new
        if new == image.host:
            continue
        for socket in image.sockets:
            local = ipaddress.ip_address(_plain(socket.local_address))
            if socket.proto == "tcp" and not (local.is_loopback or local.is_unspecified):
                assert str(local) in _own_addresses(plan, image)
    for old, news in plan.split_hosts.items():
        assert len(news) > 1
        assert not set(job.addresses[old]) & set(plan.address_map)
    for client, near, server, far in job.connections:
        near_local, near_peer = _rewritten(plan, job.image(client), near)
        far_local, far_peer = _rewritten(plan, job.image(server), far)
        assert (near_local, near_peer) == (far_peer, far_local), "the ends still meet"
        for rank, local in ((client, near_local), (server, far_local)):
            moved = plan.rank_hosts[rank] != job.image(rank).host
            if moved and not ipaddress.ip_address(local).is_loopback:
                assert local in addresses[plan.rank_hosts[rank]]
    owner = {a: host for host, listed in job.addresses.items() for a in listed}
    for old, new in plan.address_map.items():
        target_host = plan.host_map[owner[old]]
        assert target_host != owner[old]
        assert new in addresses[target_host]
        assert _family(new) == _family(old)
    listening = [
        (plan.rank_hosts[i.rank], s.local_port)
        for i in job.images
        for s in i.sockets
        if s.proto == "tcp" and s.state == "listen"
    ]
    assert len(listening) == len(set(listening))
    for rank, keys in plan.close.items():
        assert rank in plan.rank_hosts
        for key in keys:
            peer = _plain(key.split(">")[1].rsplit(":", 1)[0])
            assert peer not in job_addresses
            assert not ipaddress.ip_address(peer).is_loopback


def _own_addresses(plan: Placement, image: control_pb2.RankImage) -> Mapping[str, str]:
    if image.host in plan.split_hosts:
        return plan.rank_addresses.get(image.rank, {})
    return plan.address_map


def _rewritten(
    plan: Placement, image: control_pb2.RankImage, socket: control_pb2.SocketInfo
) -> tuple[str, str]:
    """A connection's (local, peer) addresses, as packets carry them, once the agent rewrote
    them as the plan says (agent.images.rewrite_socket_addresses)."""
    local, peer = _plain(socket.local_address), _plain(socket.peer_address)
    key = connection_key(local, socket.local_port, peer, socket.peer_port)
    new_local = _own_addresses(plan, image).get(local, local)
    by_connection = plan.peer_addresses.get(image.rank, {})
    return new_local, by_connection.get(key, plan.address_map.get(peer, peer))


@PROPERTIES
@given(job=jobs(), data=st.data())
def test_every_rank_on_a_host_of_its_own_keeps_every_connection_between_ranks(
    job: Job, data: st.DataObject
) -> None:
    """Spreading every rank to a new host of its own works unless two ranks that shared a
    host talk over loopback; then it is refused, naming them."""
    ranks = sorted(i.rank for i in job.images)
    hosts = [f"n{rank}" for rank in ranks]
    addresses = {
        **job.addresses,
        **{
            h: [f"10.{50 + i}.0.1", f"10.{50 + i}.0.2", f"fd00:{50 + i}::1", f"fd00:{50 + i}::2"]
            for i, h in enumerate(hosts)
        },
    }
    if job.over_loopback:
        with pytest.raises(ConflictError, match="are connected over loopback"):
            plan_restart(job.images, host_map={}, hosts=hosts, addresses=addresses)
        return
    plan = plan_restart(job.images, host_map={}, hosts=hosts, addresses=addresses)
    shared = {i.host for i in job.images if sum(j.host == i.host for j in job.images) > 1}
    assert set(plan.split_hosts) == shared
    _assert_consistent(plan, job, addresses)
    assert _sorted(plan.close) == _sorted(job.external)


@PROPERTIES
@given(job=jobs())
def test_ranks_of_two_hosts_listening_on_one_port_cannot_share_a_new_host(job: Job) -> None:
    assume(len({i.host for i in job.images}) > 1)
    addresses = {**job.addresses, "n1": ["10.99.0.1", "10.99.0.2", "fd00:99::1", "fd00:99::2"]}
    with pytest.raises(ConflictError, match=f"both listen on port {FIRST_PORT} "):
        plan_restart(job.images, host_map={}, hosts=["n1"], addresses=addresses)


@PROPERTIES
@given(job=jobs(), data=st.data())
def test_the_connected_ranks_are_the_other_ends_of_the_ranks_connections(
    job: Job, data: st.DataObject
) -> None:
    ranks = data.draw(st.lists(st.sampled_from([i.rank for i in job.images]), unique=True))
    found = {image.rank for image in connected_ranks(job.images, ranks)}
    expected = {peer for rank in ranks for peer in job.peers.get(rank, ())} - set(ranks)
    assert found == expected
