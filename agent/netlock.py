"""nftables network locks on this host.

* CRIU's own lock: a dump locks the tasks' TCP connections in an nftables table and, when the
  dump killed the tasks, leaves it behind (FINDINGS 12); ``remove_table`` lifts it by the name
  the dump reports (``criu.DumpResult.lock_table``).
* crctl's restore lock: ``lock_connections`` (below).

Commands go through libnftables in this process (agent.nftables). Adding rules takes about a
millisecond; anything that removes rules, sets or tables waits for the kernel's RCU grace
period (5-20 ms here): so a lock is opened by *adding* accept rules in front of its drops, and
the table is removed afterwards, off the critical path.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

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


def _match(source: str, sport: int, destination: str, dport: int) -> str:
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
    log.info("restore_locked", table=table, connections=len(connections))


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
    log.info("restore_unlocked", table=table)
