"""Socket entries of a working copy: new addresses for a job that moved, and connections to
peers outside the job restored closed.

Both rewrite ``files.img`` of an existing working copy (see :func:`make_working_copy`) by
writing a new file and renaming it into place."""

from __future__ import annotations

import ipaddress
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import structlog

from agent.images._format import (
    FD_INETSK,
    FILES_IMG,
    SHUTDOWN_BOTH,
    ImageError,
    IPAddress,
    address,
    listing,
    load,
    replace,
    text,
    words,
)
from agent.images._inspect import TCP_CLOSE, ImageSummary, InetSocket, socket_of
from crctl.errors import CrctlError

log = structlog.get_logger()

_NOT_CONNECTED = frozenset({"listen", "close"})


class AddressMapError(CrctlError):
    """An old -> new address map is malformed: not addresses, mixed IPv4/IPv6, or wildcards."""


@dataclass(frozen=True)
class RewriteReport:
    images_dir: Path
    # (old, new) -> how many endpoints (a socket's local or peer address) were rewritten.
    endpoints: Mapping[tuple[str, str], int]
    sockets: int  # sockets with at least one endpoint rewritten
    seconds: float


_NO_MAP: Mapping[str, str] = MappingProxyType({})


def rewrite_socket_addresses(
    images_dir: Path,
    address_map: Mapping[str, str],
    *,
    local_map: Mapping[str, str] = _NO_MAP,
    peer_map: Mapping[str, str] = _NO_MAP,
) -> RewriteReport:
    """Replace, in the INET sockets of the working copy ``images_dir``, every local and peer
    address found in ``address_map`` (old -> new); addresses not in the map are left alone. An
    IPv4 entry also maps its IPv4-mapped IPv6 form (``::ffff:a.b.c.d``, held by dual-stack
    sockets). ``files.img`` is replaced only if something changed (an empty map changes
    nothing).

    When the ranks of an old host went to several new hosts its addresses have no single new
    one, and the rewrite is per endpoint: ``local_map`` (old -> new, as ``address_map``) is
    this rank's own addresses, and goes first for local ends; ``peer_map`` names connections
    (``"local:port>peer:port"``, dump-time addresses as packets carry them) whose peer gets a
    new address (an IPv4-mapped peer keeps that form), before ``address_map`` is asked.

    Rewriting twice with the same map is not harmless when an old address is also a new one
    (a->b, b->c): rewrite each working copy once, right after making it."""
    started = time.monotonic()
    mapping = _parse_map(address_map)
    own = _parse_map(local_map)
    peers = _parse_peer_map(peer_map)
    listing(images_dir)
    files_img = images_dir / FILES_IMG
    counts: Counter[tuple[str, str]] = Counter()
    sockets = 0
    if mapping or own or peers:
        entries = load(files_img, "FILES")
        for entry in entries:
            if entry.type != FD_INETSK:
                continue
            isk = entry.isk
            touched = False
            local = address(isk.src_addr, files_img) if isk.src_addr else None
            for key in ("src_addr", "dst_addr"):
                field = getattr(isk, key)
                if not field:
                    continue
                old = address(field, files_img)
                if key == "src_addr":
                    new = own.get(old) or mapping.get(old)
                else:
                    new = _new_peer(isk, local, old, peers) or mapping.get(old)
                if new is None or new == old:
                    continue
                field[:] = words(new)
                counts[(text(old), text(new))] += 1
                touched = True
            sockets += touched
        if sockets:
            replace(files_img, "FILES", entries)
    report = RewriteReport(
        images_dir=images_dir,
        endpoints=MappingProxyType(dict(counts)),
        sockets=sockets,
        seconds=time.monotonic() - started,
    )
    log.info(
        "images_socket_addresses_rewritten",
        images_dir=str(images_dir),
        endpoints={f"{old}->{new}": n for (old, new), n in counts.items()},
        sockets=sockets,
        seconds=round(report.seconds, 3),
    )
    return report


# (local address, port, peer address, port) of a connection, addresses as packets carry them.
_Connection = tuple[IPAddress, int, IPAddress, int]


def _new_peer(
    isk: Any, local: IPAddress | None, peer: IPAddress, peers: Mapping[_Connection, IPAddress]
) -> IPAddress | None:
    """The peer's new address ``peer_map`` gives this socket's connection, in the form the
    socket holds it (IPv4-mapped for a dual-stack socket), or None."""
    if local is None or not isk.dst_port or not peers:
        return None
    new = peers.get((_plain(local), isk.src_port, _plain(peer), isk.dst_port))
    if new is None:
        return None
    if isinstance(peer, ipaddress.IPv6Address) and isinstance(new, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(f"::ffff:{new}")
    return new


def _parse_endpoint(text_: str) -> tuple[IPAddress, int]:
    host, _, port = text_.rpartition(":")
    return _plain(ipaddress.ip_address(host.strip("[]"))), int(port)


def _parse_peer_map(peer_map: Mapping[str, str]) -> dict[_Connection, IPAddress]:
    parsed: dict[_Connection, IPAddress] = {}
    for connection, new_text in peer_map.items():
        try:
            near, _, far = connection.partition(">")
            (local, local_port), (peer, peer_port) = _parse_endpoint(near), _parse_endpoint(far)
            new = _plain(ipaddress.ip_address(new_text))
        except ValueError as exc:
            raise AddressMapError(f"peer map {connection!r} -> {new_text!r}: {exc}") from exc
        if new.version != peer.version or new.is_unspecified:
            raise AddressMapError(
                f"peer map {connection} -> {new}: the peer {peer} cannot become {new}"
            )
        parsed[(local, local_port, peer, peer_port)] = new
    return parsed


def _parse_map(address_map: Mapping[str, str]) -> dict[IPAddress, IPAddress]:
    mapping: dict[IPAddress, IPAddress] = {}
    for old_text, new_text in address_map.items():
        try:
            old = ipaddress.ip_address(old_text)
            new = ipaddress.ip_address(new_text)
        except ValueError as exc:
            raise AddressMapError(f"address map {old_text!r} -> {new_text!r}: {exc}") from exc
        if old.version != new.version:
            raise AddressMapError(
                f"address map {old} -> {new}: an IPv{old.version} address cannot become "
                f"IPv{new.version} (the socket's family would change)"
            )
        if old.is_unspecified or new.is_unspecified:
            raise AddressMapError(f"address map {old} -> {new}: wildcard addresses cannot map")
        if old in mapping and mapping[old] != new:
            raise AddressMapError(f"address map: {old} maps to both {mapping[old]} and {new}")
        mapping[old] = new
    # A dual-stack IPv6 socket talking to an IPv4 host holds ::ffff:a.b.c.d: the same host.
    for old, new in list(mapping.items()):
        if isinstance(old, ipaddress.IPv4Address) and isinstance(new, ipaddress.IPv4Address):
            mapping.setdefault(
                ipaddress.IPv6Address(f"::ffff:{old}"), ipaddress.IPv6Address(f"::ffff:{new}")
            )
    return mapping


# -- peers outside the job ------------------------------------------------------------------


def external_connections(summary: ImageSummary, job_addresses: Iterable[str]) -> list[InetSocket]:
    """The TCP connections (any state but listen and close) of a dump whose peer is neither a
    loopback address nor one of ``job_addresses`` (the addresses of every host of the job):
    servers outside the job, which are not checkpointed with it. IPv4-mapped IPv6 peers count
    as their IPv4 address.

    Judged by address only: a process outside the job on one of the job's hosts, reached
    through that host's address, looks like part of the job."""
    job = {_plain(ipaddress.ip_address(a)) for a in job_addresses}
    found = []
    for s in summary.sockets:
        if s.proto != "tcp" or s.state in _NOT_CONNECTED or s.peer is None:
            continue
        peer = _plain(ipaddress.ip_address(s.peer.address))
        if not peer.is_loopback and peer not in job:
            found.append(s)
    return found


def _plain(value: IPAddress) -> IPAddress:
    if isinstance(value, ipaddress.IPv6Address) and value.ipv4_mapped is not None:
        return value.ipv4_mapped
    return value


def close_connections(images_dir: Path, sockets: Iterable[InetSocket]) -> int:
    """Make the working copy ``images_dir`` restore ``sockets`` (TCP connections found by
    :func:`inspect` in it or in its source, matched by file id) as closed sockets, and every
    other connection as it was; the number of sockets changed (0 when all were closed before).

    CRIU 4.2.1 restores a TCP entry with no peer port as a plain socket: it creates it, binds it
    if it has a local port, and restores its options and shutdown state. So each entry becomes
    state CLOSE with zero addresses and ports (a fresh, unbound socket, as CRIU's own
    ``tcp_close`` makes, but for these sockets only), shut down both ways, and its
    ``tcp-stream-<ino>.img`` (queues and sequence numbers) is removed. The application's next
    read then returns end of file, its next write fails with EPIPE, and poll reports
    POLLIN|POLLRDHUP|POLLHUP: as after the peer closed and went away. Nothing is sent to the
    peer, and data it had sent that the application had not read is dropped.

    (An entry that keeps its peer port is restored through TCP repair whatever its state: it
    needs its tcp-stream image, and there state CLOSE means "both FINs exchanged": CRIU binds
    the old local address and replays the FINs, which needs that address on the new host.)"""
    files = listing(images_dir)
    files_img = images_dir / FILES_IMG
    wanted = {s.id: s for s in sockets}
    if not wanted:
        return 0
    entries = load(files_img, "FILES")
    closed: list[InetSocket] = []
    for entry in entries:
        if entry.type != FD_INETSK or entry.isk.id not in wanted:
            continue
        isk = entry.isk
        socket = wanted.pop(isk.id)
        found = socket_of(isk, files_img)
        if found.ino != socket.ino or found.proto != "tcp":
            raise ImageError(
                f"{FILES_IMG}: socket {socket.id} is {found.proto} inode {found.ino:#x}, "
                f"not the TCP connection {socket.local} -> {socket.peer} (inode {socket.ino:#x})",
                path=files_img,
            )
        if isk.state == TCP_CLOSE and not isk.dst_port:
            continue
        zero = [0] * len(isk.src_addr)
        isk.state = TCP_CLOSE
        isk.src_port = 0
        isk.dst_port = 0
        isk.src_addr[:] = zero
        isk.dst_addr[:] = zero
        isk.shutdown = SHUTDOWN_BOTH
        closed.append(socket)
    if wanted:
        missing = ", ".join(f"{s.id} ({s.local} -> {s.peer})" for s in wanted.values())
        raise ImageError(f"{FILES_IMG} has no socket {missing}", path=files_img)
    if not closed:
        return 0
    replace(files_img, "FILES", entries)
    names = {p.name for p in files}
    for socket in closed:
        stream = f"tcp-stream-{socket.ino:x}.img"
        if stream in names:
            (images_dir / stream).unlink()  # removes this copy's link only
    log.info(
        "images_connections_closed",
        images_dir=str(images_dir),
        connections=[f"{s.local}->{s.peer}" for s in closed],
    )
    return len(closed)
