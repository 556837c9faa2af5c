"""Planning a restart: which new host each rank goes to, how old addresses map to new ones, and
every clash that must be refused before anything is restored. Pure: data in, plan or error out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from crctl.connections import is_connection, plain
from crctl.errors import ConfigError, ConflictError
from crctl.v1 import control_pb2


@dataclass(frozen=True)
class Placement:
    rank_hosts: dict[int, str]  # rank -> new host
    host_map: dict[str, str]  # old host -> new host, for old hosts whose ranks all went to one
    address_map: dict[str, str]  # old address -> new address (moved hosts of host_map only)
    close: dict[int, list[str]]  # rank -> connections ("l:p>r:q") restored closed
    # Old host -> the new hosts its ranks went to, when several: its name and addresses have no
    # single new one, so its ranks' endpoints are rewritten one by one (the two maps below).
    split_hosts: dict[str, list[str]] = field(default_factory=dict)
    # Rank of a split host that moved -> its old host's addresses -> its new host's.
    rank_addresses: dict[int, dict[str, str]] = field(default_factory=dict)
    # Rank -> its connection to a rank of a split host ("l:p>r:q", dump-time plain addresses)
    # -> the new address of that rank's host, where it changes.
    peer_addresses: dict[int, dict[str, str]] = field(default_factory=dict)

    @property
    def hosts(self) -> list[str]:
        return sorted(set(self.rank_hosts.values()))


def connection_key(local: str, local_port: int, peer: str, peer_port: int) -> str:
    return f"{local}:{local_port}>{peer}:{peer_port}"


def _connection(socket: control_pb2.SocketInfo, *, reverse: bool = False) -> str:
    """A TCP connection's key in plain addresses, as its socket sees it or (``reverse``) as the
    socket at its other end does."""
    near = (plain(socket.local_address), socket.local_port)
    far = (plain(socket.peer_address), socket.peer_port)
    if reverse:
        near, far = far, near
    return connection_key(*near, *far)


def _family(address: str) -> int:
    return ipaddress.ip_address(address).version


def _pair_addresses(old: Sequence[str], new: Sequence[str]) -> dict[str, str]:
    """Old host's addresses -> new host's, the first of each family with the first of the same
    family, and so on."""
    mapping = {}
    for version in (4, 6):
        olds = [a for a in old if _family(a) == version]
        news = [a for a in new if _family(a) == version]
        for index, address in enumerate(olds):
            if index < len(news):
                mapping[address] = news[index]
    return mapping


def _new_hosts(
    images: Sequence[control_pb2.RankImage],
    host_map: Mapping[str, str],
    hosts: Sequence[str],
) -> dict[int, str]:
    old_hosts = {image.host for image in images}
    if host_map and hosts:
        raise ConfigError("give either --map or --hosts, not both")
    if hosts:
        return {
            image.rank: hosts[index % len(hosts)]
            for index, image in enumerate(sorted(images, key=lambda i: i.rank))
        }
    unknown = sorted(set(host_map) - old_hosts)
    if unknown:
        raise ConfigError(
            f"--map names {', '.join(unknown)}, which ran no rank of this checkpoint "
            f"(its hosts: {', '.join(sorted(old_hosts))})"
        )
    return {image.rank: host_map.get(image.host, image.host) for image in images}


def _is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback


@dataclass(frozen=True)
class _Endpoints:
    """Which rank holds an endpoint of an old host: the far end of a connection, found by the
    connection itself (two ranks of a host may use one local port towards different peers),
    or, for a connection not (yet) accepted, the listener of its port."""

    ends: dict[tuple[str, str], int]  # (old host, connection key as its holder sees it) -> rank
    listeners: dict[tuple[str, int], set[tuple[str, int]]]  # (old host, port) -> (bound, rank)

    @classmethod
    def of(cls, images: Sequence[control_pb2.RankImage]) -> _Endpoints:
        ends: dict[tuple[str, str], int] = {}
        listeners: dict[tuple[str, int], set[tuple[str, int]]] = {}
        for image in images:
            for socket in image.sockets:
                if socket.proto != "tcp":
                    continue
                if socket.state == "listen":
                    bound = plain(socket.local_address) if socket.local_address else "::"
                    listeners.setdefault((image.host, socket.local_port), set()).add(
                        (bound, image.rank)
                    )
                elif is_connection(socket):
                    ends[(image.host, _connection(socket))] = image.rank
        return cls(ends, listeners)

    def far_ranks(self, host: str, socket: control_pb2.SocketInfo) -> set[int]:
        """The ranks of old host ``host`` that may hold the far end of ``socket``'s
        connection: the one holding the connection, else those listening on its port at its
        address (or at any address of its family)."""
        holder = self.ends.get((host, _connection(socket, reverse=True)))
        if holder is not None:
            return {holder}
        peer = plain(socket.peer_address)
        wildcards = {"::"} if _family(peer) == 6 else {"0.0.0.0", "::"}
        return {
            rank
            for bound, rank in self.listeners.get((host, socket.peer_port), ())
            if bound == peer or bound in wildcards
        }


def plan_restart(
    images: Sequence[control_pb2.RankImage],
    *,
    host_map: Mapping[str, str],
    hosts: Sequence[str],
    addresses: Mapping[str, Sequence[str]],
) -> Placement:
    """``addresses``: the current addresses of every candidate new host.

    The ranks of one old host may go to several new hosts: its address then has no single new
    address, and each endpoint of its ranks is rewritten to the address of the new host of the
    rank that holds it (``split_hosts``, ``rank_addresses``, ``peer_addresses``)."""
    if not images:
        raise ConfigError("the checkpoint has no ranks")
    rank_hosts = _new_hosts(images, host_map, hosts)
    missing = sorted({h for h in rank_hosts.values() if h not in addresses})
    if missing:
        raise ConfigError(f"unknown host {', '.join(missing)}: no agent registered there")

    went_to: dict[str, set[str]] = {}
    old_addresses: dict[str, set[str]] = {}
    for image in images:
        went_to.setdefault(image.host, set()).add(rank_hosts[image.rank])
        old_addresses.setdefault(image.host, set()).update(image.host_addresses)
    moves = {old: next(iter(new)) for old, new in went_to.items() if len(new) == 1}
    split_hosts = {old: sorted(new) for old, new in went_to.items() if len(new) > 1}

    def pairing(old: str, new: str) -> dict[str, str]:
        if old == new:
            return {}
        return _pair_addresses(sorted(old_addresses.get(old, ())), addresses[new])

    address_map: dict[str, str] = {}
    for old, new in moves.items():
        address_map.update(pairing(old, new))
    rank_addresses = {
        image.rank: pairing(image.host, rank_hosts[image.rank])
        for image in images
        if image.host in split_hosts and rank_hosts[image.rank] != image.host
    }
    address_host = {plain(a): host for host, listed in old_addresses.items() for a in listed}
    endpoints = _Endpoints.of(images) if split_hosts else _Endpoints({}, {})

    listening: dict[tuple[str, int], int] = {}
    connections: dict[tuple[str, str], int] = {}
    close: dict[int, list[str]] = {}
    peer_addresses: dict[int, dict[str, str]] = {}
    for image in sorted(images, key=lambda i: i.rank):
        new_host = rank_hosts[image.rank]
        own_map = rank_addresses.get(image.rank, {}) if image.host in split_hosts else address_map
        for socket in image.sockets:
            if socket.proto != "tcp":
                continue
            local = _mapped_local(image, plain(socket.local_address), own_map, new_host)
            if socket.state == "listen":
                key = (new_host, socket.local_port)
                other = listening.setdefault(key, image.rank)
                if other != image.rank:
                    raise ConflictError(
                        f"ranks {other} and {image.rank} both listen on port "
                        f"{socket.local_port} and would both run on {new_host}: "
                        "give them different hosts"
                    )
                continue
            if not socket.peer_address or socket.state == "close":
                continue
            peer = plain(socket.peer_address)
            if peer not in address_host and not _is_loopback(peer):
                close.setdefault(image.rank, []).append(  # as the images spell it
                    connection_key(
                        socket.local_address,
                        socket.local_port,
                        socket.peer_address,
                        socket.peer_port,
                    )
                )
                continue
            if _is_loopback(peer):
                if image.host in split_hosts:
                    _check_loopback_stays(image, socket, endpoints, rank_hosts)
                new_peer = peer
            elif address_host[peer] in split_hosts:
                peer_host = address_host[peer]
                new_peer = _split_peer(
                    image, socket, peer_host, endpoints, rank_hosts, pairing, split_hosts[peer_host]
                )
                if new_peer != peer:
                    peer_addresses.setdefault(image.rank, {})[_connection(socket)] = new_peer
            else:
                new_peer = address_map.get(peer, peer)
            tuple_key = (
                new_host,
                connection_key(local, socket.local_port, new_peer, socket.peer_port),
            )
            other = connections.setdefault(tuple_key, image.rank)
            if other != image.rank:
                raise ConflictError(
                    f"ranks {other} and {image.rank} would both hold the connection "
                    f"{tuple_key[1]} on {new_host}: give them different hosts"
                )
    return Placement(
        rank_hosts,
        moves,
        address_map,
        close,
        split_hosts=split_hosts,
        rank_addresses={rank: m for rank, m in rank_addresses.items() if m},
        peer_addresses=peer_addresses,
    )


def _keep_together(host: str, split_hosts: Sequence[str]) -> str:
    return f"keep {host}'s ranks on one host (they would go to {', '.join(split_hosts)})"


def _check_loopback_stays(
    image: control_pb2.RankImage,
    socket: control_pb2.SocketInfo,
    endpoints: _Endpoints,
    rank_hosts: Mapping[int, str],
) -> None:
    """A loopback connection between two ranks of one host works only if they stay together."""
    for far in sorted(endpoints.far_ranks(image.host, socket)):
        if rank_hosts[far] != rank_hosts[image.rank]:
            raise ConflictError(
                f"ranks {image.rank} and {far} of {image.host} are connected over loopback "
                f"({_connection(socket)}) but would run on {rank_hosts[image.rank]} and "
                f"{rank_hosts[far]}: give them one host"
            )


def _split_peer(
    image: control_pb2.RankImage,
    socket: control_pb2.SocketInfo,
    peer_host: str,
    endpoints: _Endpoints,
    rank_hosts: Mapping[int, str],
    pairing: Callable[[str, str], dict[str, str]],
    split: Sequence[str],
) -> str:
    """The new address of the peer of ``socket`` (of ``image``'s rank), an endpoint on the split
    old host ``peer_host``: the address of the new host of the rank that holds it."""
    peer = plain(socket.peer_address)
    far = endpoints.far_ranks(peer_host, socket)
    where = {rank_hosts[rank] for rank in far}
    if not where:
        if socket.state not in ("established", "syn-sent"):
            return peer  # a connection on its way out: no rank of the job will send on it
        raise ConflictError(
            f"rank {image.rank}'s connection {_connection(socket)} leads to {peer}:"
            f"{socket.peer_port} on {peer_host}, which no rank of the job holds, so it has no "
            f"new address: {_keep_together(peer_host, split)}"
        )
    if len(where) > 1:
        raise ConflictError(
            f"ranks {', '.join(map(str, sorted(far)))} of {peer_host} all listen on port "
            f"{socket.peer_port}, which rank {image.rank} connects to, but would run on "
            f"{', '.join(sorted(where))}: give them one host"
        )
    new_host = where.pop()
    if new_host == peer_host:
        return peer
    new_peer = pairing(peer_host, new_host).get(peer)
    if new_peer is None:
        ranks = ", ".join(map(str, sorted(far)))
        raise ConflictError(
            f"{new_host} has no address of the family of {peer} (rank {ranks}, from "
            f"{peer_host}, connected to rank {image.rank}): give the rank a host with an "
            f"IPv{_family(peer)} address"
        )
    return new_peer


def _mapped_local(
    image: control_pb2.RankImage, local: str, address_map: Mapping[str, str], new_host: str
) -> str:
    if local in address_map:
        return address_map[local]
    parsed = ipaddress.ip_address(local)
    if parsed.is_unspecified or parsed.is_loopback or new_host == image.host:
        return local
    if local not in image.host_addresses:
        raise ConflictError(
            f"rank {image.rank} has a socket bound to {local}, which is not an address of "
            f"{image.host} and cannot be mapped to {new_host}: restart it on {image.host}"
        )
    raise ConflictError(
        f"{new_host} has no address of the family of {local} (rank {image.rank}, from "
        f"{image.host}): give the rank a host with an IPv{parsed.version} address"
    )


def connected_ranks(
    images: Sequence[control_pb2.RankImage], ranks: Sequence[int]
) -> list[control_pb2.RankImage]:
    """The other ranks at the far end of an established TCP connection of one of ``ranks`` (as
    the manifest recorded them, with their dump-time addresses)."""
    wanted = {
        _connection(s, reverse=True)
        for image in images
        if image.rank in ranks
        for s in image.sockets
        if s.proto == "tcp" and s.state == "established" and s.peer_address
    }
    return [
        image
        for image in images
        if image.rank not in ranks
        and any(s.peer_address and _connection(s) in wanted for s in image.sockets)
    ]
