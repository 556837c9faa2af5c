"""Planning a restart: which new host each rank goes to, how old addresses map to new ones, and
every clash that must be refused before anything is restored. Pure: data in, plan or error out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from crctl.connections import plain
from crctl.errors import ConfigError, ConflictError
from crctl.v1 import control_pb2


@dataclass(frozen=True)
class Placement:
    rank_hosts: dict[int, str]  # rank -> new host
    host_map: dict[str, str]  # old host -> new host
    address_map: dict[str, str]  # old address -> new address (moved hosts only)
    close: dict[int, list[str]]  # rank -> connections ("l:p>r:q") restored closed

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
) -> tuple[dict[int, str], dict[str, str]]:
    old_hosts = {image.host for image in images}
    if host_map and hosts:
        raise ConfigError("give either --map or --hosts, not both")
    if hosts:
        rank_hosts = {
            image.rank: hosts[index % len(hosts)]
            for index, image in enumerate(sorted(images, key=lambda i: i.rank))
        }
    else:
        unknown = sorted(set(host_map) - old_hosts)
        if unknown:
            raise ConfigError(
                f"--map names {', '.join(unknown)}, which ran no rank of this checkpoint "
                f"(its hosts: {', '.join(sorted(old_hosts))})"
            )
        rank_hosts = {image.rank: host_map.get(image.host, image.host) for image in images}
    moves: dict[str, str] = {}
    for image in sorted(images, key=lambda i: i.rank):
        new = rank_hosts[image.rank]
        if moves.setdefault(image.host, new) != new:
            raise ConflictError(
                f"ranks of {image.host} would be split across {moves[image.host]} and {new}: "
                "ranks that shared a host share its address, so they must move together"
            )
    return rank_hosts, moves


def plan_restart(
    images: Sequence[control_pb2.RankImage],
    *,
    host_map: Mapping[str, str],
    hosts: Sequence[str],
    addresses: Mapping[str, Sequence[str]],
) -> Placement:
    """``addresses``: the current addresses of every candidate new host."""
    if not images:
        raise ConfigError("the checkpoint has no ranks")
    rank_hosts, moves = _new_hosts(images, host_map, hosts)
    missing = sorted({h for h in rank_hosts.values() if h not in addresses})
    if missing:
        raise ConfigError(f"unknown host {', '.join(missing)}: no agent registered there")

    address_map: dict[str, str] = {}
    old_addresses: dict[str, set[str]] = {}
    for image in images:
        old_addresses.setdefault(image.host, set()).update(image.host_addresses)
    for old, new in moves.items():
        if old != new:
            for source, target in _pair_addresses(
                sorted(old_addresses.get(old, ())), addresses[new]
            ).items():
                address_map[source] = target
    job_addresses = set().union(*old_addresses.values())

    listening: dict[tuple[str, int], int] = {}
    connections: dict[tuple[str, str], int] = {}
    close: dict[int, list[str]] = {}
    for image in sorted(images, key=lambda i: i.rank):
        new_host = rank_hosts[image.rank]
        for socket in image.sockets:
            if socket.proto != "tcp":
                continue
            local = _mapped_local(image, plain(socket.local_address), address_map, new_host)
            if socket.state == "listen":
                key = (new_host, socket.local_port)
                other = listening.setdefault(key, image.rank)
                if other != image.rank:
                    raise ConflictError(
                        f"ranks {other} and {image.rank} both listen on port "
                        f"{socket.local_port} and would both run on {new_host}"
                    )
                continue
            if not socket.peer_address or socket.state == "close":
                continue
            peer = plain(socket.peer_address)
            if peer not in job_addresses and not ipaddress.ip_address(peer).is_loopback:
                close.setdefault(image.rank, []).append(  # as the images spell it
                    connection_key(
                        socket.local_address,
                        socket.local_port,
                        socket.peer_address,
                        socket.peer_port,
                    )
                )
                continue
            tuple_key = (
                new_host,
                connection_key(
                    local, socket.local_port, address_map.get(peer, peer), socket.peer_port
                ),
            )
            other = connections.setdefault(tuple_key, image.rank)
            if other != image.rank:
                raise ConflictError(
                    f"ranks {other} and {image.rank} would both hold the connection "
                    f"{tuple_key[1]} on {new_host}"
                )
    return Placement(rank_hosts, moves, address_map, close)


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
            f"{image.host} and cannot be mapped to {new_host}"
        )
    raise ConflictError(
        f"{new_host} has no address of the family of {local} (rank {image.rank}, from {image.host})"
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
