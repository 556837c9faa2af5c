"""Helpers for end-to-end tests: run the real `crctl` CLI, poll for conditions."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

# Folders tests make for ranks live here: shared by every emulated host, also when their
# /tmp is each host's own (testbed up --private-storage), as home directories on NFS would be.
SHARED_TMP = "/var/tmp"


def crctl(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real CLI as a separate process."""
    result = subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"crctl {' '.join(args)} exited {result.returncode}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}"
        )
    return result


def crctl_background(*args: str) -> subprocess.Popen[str]:
    """Start the real CLI without waiting for it (read it with ``communicate()``)."""
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def running_ring(state: Any, request: Any, hosts: list[str]) -> Iterator[Any]:
    """A ring job named after the test, on ``hosts``; killed afterwards."""
    from testbed.ringjob import launch_ring

    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.removeprefix("test_").lower()).strip("-")
    if len(name) > 40:  # parametrized tests differ at the end: keep that difference
        name = f"{name[:32]}-{hashlib.sha1(name.encode()).hexdigest()[:7]}"
    job = f"ring-{name}"
    # an earlier test may have restarted a daemon: start from every agent connected
    wait_for(
        lambda: all(s == "alive" for s in agent_states().values()),
        timeout=20,
        what="every agent alive",
    )
    ring = launch_ring(state, job, hosts)
    ring.wait_for_tokens(10, timeout=15)
    yield ring
    # the next test's ring reuses the ports: make sure this one is gone
    wait_for(
        lambda: all(s == "alive" for s in agent_states().values()),
        timeout=20,
        what="every agent alive",
    )
    if crctl_json("status", job)["state"] == "running":
        crctl("kill", job)


def launch_rank(job: str, host: str, *argv: str) -> None:
    """One more rank of ``job`` on ``host`` (through the real CLI)."""
    crctl("launch", "--job", job, "--host", host, "--", *argv)


def memory_hog(mib: int) -> list[str]:
    """A rank that touches ``mib`` MiB (a slow dump), then sleeps."""
    return [
        sys.executable,
        "-c",
        f"import time; b = bytearray({mib} * 2**20)\n"
        "for i in range(0, len(b), 4096): b[i] = 1\ntime.sleep(3600)",
    ]


def kill_daemon(name: str) -> bool:
    """SIGKILL a testbed daemon ("coordinator", "agent-hN") by its current recorded PID."""
    import signal

    from testbed import bed, procs

    state = bed.status(bed.DEFAULT_DIR)
    assert state is not None, "the testbed is down"
    return procs.kill(state.processes[name], signal.SIGKILL)


def crctl_json(*args: str) -> Any:
    return json.loads(crctl(*args, "--json").stdout)


def wait_for(
    condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1
) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def agent_states() -> dict[str, str]:
    return {a["host"]: a["state"] for a in crctl_json("agents")}


def copies_made(job: str, checkpoint: str, count: int) -> dict[int, list[str]]:
    """Wait for every rank to have ``count`` copies recorded; rank -> its copies."""

    def copies() -> dict[int, list[str]]:
        found = next(c for c in crctl_json("checkpoints", job) if c["checkpoint"] == checkpoint)
        return {r["rank"]: r.get("copies", []) for r in found["manifest"]["ranks"]}

    wait_for(lambda: all(len(c) == count for c in copies().values()), timeout=20,
             what=f"{count} copies of every rank of {checkpoint}")  # fmt: skip
    return copies()
