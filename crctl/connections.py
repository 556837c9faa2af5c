"""What a TCP connection is, and when its peer is outside the job: one home for both, used by
the agents (reading their dumps) and the coordinator (judging the votes, planning restarts).

A dual-stack IPv6 socket talking to an IPv4 peer holds ``::ffff:a.b.c.d``: that is the IPv4
host, as packets carry it, and it is compared as such everywhere."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Protocol, TypeVar

# Socket states with no peer to talk to (CRIU's names for the kernel's TCP states).
NOT_CONNECTED = frozenset({"listen", "close"})


def plain(address: str) -> str:
    """The address as packets carry it (an IPv4-mapped IPv6 address as its IPv4 address),
    in its canonical spelling."""
    parsed = ipaddress.ip_address(address)
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(parsed)


class Socket(Protocol):
    """A socket as a dump records it (crctl.v1 SocketInfo has these fields)."""

    @property
    def proto(self) -> str: ...

    @property
    def state(self) -> str: ...

    @property
    def peer_address(self) -> str: ...


def is_connection(socket: Socket) -> bool:
    """A TCP socket with a peer (any state but listening and closed)."""
    return socket.proto == "tcp" and bool(socket.peer_address) and socket.state not in NOT_CONNECTED


S = TypeVar("S", bound=Socket)


def addresses(listed: Iterable[str]) -> frozenset[str]:
    """A set of addresses to judge peers against (:func:`outside`), each as packets carry it."""
    return frozenset(plain(a) for a in listed)


def outside(sockets: Iterable[S], known: frozenset[str]) -> list[S]:
    """The connections among ``sockets`` whose peer is neither loopback nor in ``known``
    (made by :func:`addresses`)."""
    found = []
    for s in sockets:
        if not is_connection(s):
            continue
        peer = plain(s.peer_address)
        if not ipaddress.ip_address(peer).is_loopback and peer not in known:
            found.append(s)
    return found
