"""nftables network locks on this host.

* CRIU's own lock: a dump locks the tasks' TCP connections in an nftables table and, when the
  dump killed the tasks, leaves it behind (FINDINGS 12); ``remove_table`` lifts it by the name
  the dump reports (``criu.DumpResult.lock_table``).
* crctl's restore lock: ``lock_connections`` (below).
"""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass

import structlog

from crctl.errors import CrctlError

log = structlog.get_logger()


def _nft(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nft", *args], capture_output=True, text=True, check=False)


def remove_table(table: str, family: str = "inet") -> bool:
    """Delete an nftables table if it is there. True if one was deleted."""
    if _nft("list", "table", family, table).returncode != 0:
        return False
    result = _nft("delete", "table", family, table)
    if result.returncode != 0:
        log.warning("nft_table_not_removed", table=table, error=result.stderr.strip())
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
    result = subprocess.run(
        ["nft", "-f", "-"],
        input=lock_ruleset(table, connections),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise CrctlError(
            f"cannot lock the job's connections: nft: {result.stderr.strip()}", phase="lock"
        )
    log.info("restore_locked", table=table, connections=len(connections))
