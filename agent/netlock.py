"""nftables network locks on this host.

* CRIU's own lock: a dump locks the tasks' TCP connections in an nftables table and, when the
  dump killed the tasks, leaves it behind (FINDINGS 12); ``remove_table`` lifts it by the name
  the dump reports (``criu.DumpResult.lock_table``).
* crctl's own locks: one table dropping both directions of given TCP connections
  (``lock_connections``), for a restore until every rank is held (below), and for a checkpoint
  while its ranks are dumped (``task_connections`` finds the connections of frozen tasks).

Commands go through libnftables in this process (agent.nftables). Adding rules takes about a
millisecond; anything that removes rules, sets or tables waits for the kernel's RCU grace
period (5-20 ms here): so a lock is opened by *adding* accept rules in front of its drops, and
the table is removed afterwards, off the critical path.
"""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

from crctl import nftables
from crctl.errors import CrctlError

log = structlog.get_logger()


def table_exists(table: str, family: str = "inet") -> bool:
    try:
        nftables.run(f"list table {family} {table}")
    except nftables.NftError:
        return False
    return True


def remove_table(table: str, family: str = "inet") -> bool:
    """Delete an nftables table if it is there. True if one was deleted."""
    if not table_exists(table, family):
        return False
    try:
        nftables.run(f"delete table {family} {table}")
    except nftables.NftError as exc:
        log.warning("nft_table_not_removed", table=table, error=exc.message)
        return False
    log.info("nft_table_removed", table=table)
    return True


LOCK_PREFIX = "crctl-"  # crctl's lock tables: crctl-ckpt-<id> (dumps), crctl-rst-<id> (restores)


def remove_stale_locks() -> list[str]:
    """Remove every crctl lock table of this host (its network namespace): for an agent that
    just started, before it serves, every one is an earlier agent's that died holding it (a
    dump's lock is also lifted by its thaw guard; a restore's, by nobody else). Returns the
    tables removed."""
    try:
        listed = nftables.run("list tables inet")
    except nftables.NftError as exc:
        log.warning("nft_tables_not_listed", error=exc.message)
        return []
    stale = [
        name
        for line in listed.splitlines()
        if len(parts := line.split()) == 3 and (name := parts[2]).startswith(LOCK_PREFIX)
    ]
    removed = [t for t in stale if remove_table(t)]
    if removed:
        log.warning("stale_locks_removed", tables=removed)
    return removed


def remove_table_soon(table: str, family: str = "inet") -> None:
    """:func:`remove_table` in a worker thread: the caller (an event loop) does not wait for
    the kernel."""

    def report(done: asyncio.Future[bool]) -> None:
        if not done.cancelled() and done.exception() is not None:
            log.error("nft_table_not_removed", table=table, error=str(done.exception()))

    loop = asyncio.get_running_loop()
    loop.run_in_executor(None, remove_table, table, family).add_done_callback(report)


# --- the restore lock -----------------------------------------------------------------------
#
# Restoring two ends of a connection one after the other lets the first end's packets reach a
# host where the second does not exist yet: RST, and both die (FINDINGS 11). Every target host
# drops the job's connections until all ranks are restored and held.


@dataclass(frozen=True)
class Connection:
    local: str
    local_port: int
    peer: str
    peer_port: int


def wire_address(text: str) -> str:
    """The address as packets carry it: a dual-stack socket's IPv4-mapped IPv6 address
    (``::ffff:a.b.c.d``) talks IPv4."""
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _match(source: str, sport: int, destination: str, dport: int) -> str:
    source, destination = wire_address(source), wire_address(destination)
    family = "ip6" if ipaddress.ip_address(source).version == 6 else "ip"
    return (
        f"{family} saddr {source} tcp sport {sport} {family} daddr {destination} tcp dport {dport}"
    )


def lock_ruleset(table: str, connections: list[Connection]) -> str:
    """An nftables table dropping both directions of every connection."""
    inbound = [_match(c.peer, c.peer_port, c.local, c.local_port) for c in connections]
    outbound = [_match(c.local, c.local_port, c.peer, c.peer_port) for c in connections]
    lines = [f"table inet {table} {{"]
    for chain, hook, matches in (("input", "input", inbound), ("output", "output", outbound)):
        lines.append(f"  chain {chain} {{")
        lines.append(f"    type filter hook {hook} priority -150; policy accept;")
        lines.extend(f"    {m} drop" for m in matches)
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def lock_connections(table: str, connections: list[Connection]) -> None:
    """Install the lock (replacing a table of the same name)."""
    remove_table(table)
    try:
        nftables.run(lock_ruleset(table, connections))
    except nftables.NftError as exc:
        raise CrctlError(f"cannot lock the job's connections: {exc.message}", phase="lock") from exc
    log.info("connections_locked", table=table, connections=len(connections))


def open_lock(table: str) -> None:
    """Let the locked connections through again, at once: an accept rule goes in front of the
    drops of both chains. The table stays until :func:`remove_table`."""
    try:
        nftables.run(
            f"insert rule inet {table} input accept\ninsert rule inet {table} output accept"
        )
    except nftables.NftError as exc:
        raise CrctlError(
            f"cannot unlock the job's connections: {exc.message}", phase="unlock"
        ) from exc
    log.info("connections_unlocked", table=table)


# --- the connections of frozen tasks ------------------------------------------------------------
#
# /proc/<pid>/net/tcp would name them, but reading it walks the kernel's whole TCP hash table
# (about 5 ms per file on this 24 GB machine, while the ranks stand frozen). Instead each socket
# descriptor of the tasks is copied into this process with pidfd_getfd(2), asked its addresses
# and TCP state, and closed again: microseconds per socket, and the tasks' sockets are
# untouched (a second reference to the same socket, dropped at once).

_SYS_PIDFD_GETFD = 438  # the same number on every architecture (generic syscall table)
_TCP_LISTEN = 10
_TCP_CLOSE = 7
_libc = ctypes.CDLL(None, use_errno=True)


def _borrow_fd(pidfd: int, fd: int) -> int:
    copy = int(_libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0))
    if copy < 0:
        error = ctypes.get_errno()
        raise OSError(error, f"pidfd_getfd: {os.strerror(error)}")
    return copy


_UNKNOWN_PEER = "unknown peer"


def _tcp_connection(fd: int) -> Connection | str | None:
    """The connection of a borrowed socket descriptor if it is a TCP socket in any state but
    listen and close; ``_UNKNOWN_PEER`` for one that has no peer address to give yet (a
    connect in progress: CRIU dumps those too, with the destination it finds)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:  # a kind of socket Python cannot wrap: not TCP
        os.close(fd)
        return None
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.proto != socket.IPPROTO_TCP:
            return None
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
        if state in (_TCP_LISTEN, _TCP_CLOSE):
            return None
        local = sock.getsockname()
        try:
            peer = sock.getpeername()
        except OSError:
            return _UNKNOWN_PEER
    except OSError:
        return None
    finally:
        sock.close()  # our reference only
    return Connection(wire_address(local[0]), local[1], wire_address(peer[0]), peer[1])


def _proc_address(field: str) -> tuple[str, int]:
    """``/proc/net/tcp{,6}``'s ``ADDR:PORT``: the address as native 32-bit words in hex (the
    bytes of each packed word are in network order), the port in hex."""
    words, port = field.split(":")
    packed = b"".join(struct.pack("=I", int(words[i : i + 8], 16)) for i in range(0, len(words), 8))
    return wire_address(str(ipaddress.ip_address(packed))), int(port, 16)


def _from_proc(pid: int, inodes: set[int]) -> dict[int, Connection]:
    """The slow way, for the rare sockets that cannot name their peer themselves."""
    found: dict[int, Connection] = {}
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[9]) in inodes:
                (local, local_port), (peer, peer_port) = map(_proc_address, fields[1:3])
                found[int(fields[9])] = Connection(local, local_port, peer, peer_port)
    return found


def task_connections(pids: Iterable[int]) -> list[Connection]:
    """The TCP connections (any state but listen and close) held by descriptors of ``pids``,
    which must be in one network namespace and must not change meanwhile (frozen)."""
    found: dict[int, Connection] = {}  # by socket inode: a socket shared by several tasks
    unknown: dict[int, int] = {}  # socket inode -> a pid holding it
    for pid in pids:
        pidfd = os.pidfd_open(pid)
        try:
            for entry in os.scandir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(entry.path)
                except FileNotFoundError:
                    continue
                if not target.startswith("socket:["):
                    continue
                inode = int(target[len("socket:[") : -1])
                if inode in found or inode in unknown:
                    continue
                connection = _tcp_connection(_borrow_fd(pidfd, int(entry.name)))
                if isinstance(connection, Connection):
                    found[inode] = connection
                elif connection == _UNKNOWN_PEER:
                    unknown[inode] = pid
        finally:
            os.close(pidfd)
    if unknown:
        found.update(_from_proc(next(iter(unknown.values())), set(unknown)))
    return list(found.values())
