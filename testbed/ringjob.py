"""Launching and watching the ring workload (testbed.ring) as a crctl job on the testbed: used by
the demo, the benchmarks and the end-to-end tests."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli.client import CoordinatorClient
from testbed.bed import State

RING_PORT = 7100


def read_status(path: Path) -> dict[str, Any] | None:
    """A JSON status file a rank rewrites (replaced whole; a torn read is retried); None if
    there is none yet."""
    for _ in range(50):
        try:
            data: dict[str, Any] = json.loads(path.read_text())
            return data
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            time.sleep(0.002)
    return None


@dataclass
class RingJob:
    job: str
    hosts: list[str]
    status_dir: Path
    api_address: str

    def status(self, rank: int) -> dict[str, Any]:
        """The rank's status record (rewritten in place by the rank; a torn read is retried)."""
        found = read_status(self.status_dir / f"{rank}.json")
        return (
            found
            if found is not None
            else {"rank": rank, "tokens": 0, "errors": [], "missing": True}
        )

    def statuses(self) -> list[dict[str, Any]]:
        return [self.status(rank) for rank in range(len(self.hosts))]

    def errors(self) -> list[str]:
        return [f"rank {s.get('rank')}: {e}" for s in self.statuses() for e in s["errors"]]

    def tokens(self) -> int:
        return min(int(s["tokens"]) for s in self.statuses())

    def wait_for_tokens(self, at_least: int, timeout: float) -> float:
        """Wait until every rank has seen ``at_least`` tokens; returns the seconds waited."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.errors():
                raise AssertionError(f"ring {self.job} reported errors: {self.errors()}")
            if self.tokens() >= at_least:
                return time.monotonic() - started
            time.sleep(0.02)
        raise AssertionError(
            f"ring {self.job} did not reach {at_least} tokens in {timeout}s "
            f"(now {[s['tokens'] for s in self.statuses()]}; errors {self.errors()})"
        )

    def longest_stall(self, since: float) -> float:
        """The longest gap between two tokens any rank received, among the gaps that ended after
        ``since`` (wall-clock seconds); 0.0 when none was long enough to be recorded."""
        return max(
            (gap for s in self.statuses() for ended, gap in s.get("stalls", []) if ended >= since),
            default=0.0,
        )

    def wait_for_progress(self, tokens: int = 20, timeout: float = 15.0) -> float:
        return self.wait_for_tokens(self.tokens() + tokens, timeout)


def launch_ring(
    state: State,
    job: str,
    hosts: list[str],
    *,
    memory_mib: int = 0,
    interval: float = 0.01,
    print_every: int = 50,
) -> RingJob:
    """One rank per host, rank i on hosts[i], talking over the hosts' addresses."""
    status_dir = Path(state.directory) / "jobs" / job
    status_dir.mkdir(parents=True, exist_ok=True)
    for old in status_dir.glob("*.json"):
        old.unlink()
    peers = ",".join(state.hosts[h].address for h in hosts)
    with CoordinatorClient(state.api_address, timeout=60) as client:
        for rank, host in enumerate(hosts):
            argv = [
                sys.executable,
                "-m",
                "testbed.ring",
                "--rank",
                str(rank),
                "--peers",
                peers,
                "--port",
                str(RING_PORT),
                "--status",
                str(status_dir / f"{rank}.json"),
                "--interval",
                str(interval),
                "--memory-mib",
                str(memory_mib),
                "--print-every",
                str(print_every),
            ]
            client.launch(job, host, rank, argv, {})
    return RingJob(job=job, hosts=hosts, status_dir=status_dir, api_address=state.api_address)
