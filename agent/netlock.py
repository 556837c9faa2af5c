"""nftables network locks on this host.

* CRIU's own lock: a dump locks the tasks' TCP connections in an nftables table and, when the
  dump killed the tasks, leaves it behind (FINDINGS 12); ``remove_table`` lifts it by the name
  the dump reports (``criu.DumpResult.lock_table``).
"""

from __future__ import annotations

import subprocess

import structlog

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
