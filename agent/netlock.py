"""nftables network locks on this host.

* CRIU's own lock: a dump locks the tasks' TCP connections in an ``inet CRIU-<run id>`` table
  and, when the dump killed the tasks, leaves it behind (FINDINGS 12). The run id is in CRIU's
  log; ``remove_criu_lock`` lifts exactly that table.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import structlog

log = structlog.get_logger()

_RUN_ID = re.compile(r"CRIU run id = ([0-9a-fA-F-]+)")


def _nft(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nft", *args], capture_output=True, text=True, check=False)


def criu_run_id(log_path: Path) -> str | None:
    """The run id CRIU printed at the top of its log (it names CRIU's nftables table)."""
    try:
        with log_path.open(errors="replace") as fh:
            for _, line in zip(range(200), fh, strict=False):
                match = _RUN_ID.search(line)
                if match:
                    return match.group(1)
    except OSError:
        return None
    return None


def remove_criu_lock(run_id: str) -> bool:
    """Delete CRIU's lock table of that run, if it is there. True if one was deleted."""
    table = f"CRIU-{run_id}"
    if _nft("list", "table", "inet", table).returncode != 0:
        return False
    result = _nft("delete", "table", "inet", table)
    if result.returncode != 0:
        log.warning("criu_lock_not_removed", table=table, error=result.stderr.strip())
        return False
    log.info("criu_lock_removed", table=table)
    return True
