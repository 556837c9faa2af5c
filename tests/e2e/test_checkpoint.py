"""Consistent checkpoints of a running 3-host TCP ring with real CRIU, real agents and a real
coordinator: commits that never harm the ring, and aborts that leave it running untouched."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest

from testbed import bed, procs
from testbed.ringjob import RingJob

from .conftest import COMMIT_TIMEOUT
from .helpers import (
    crctl,
    crctl_background,
    crctl_json,
    kill_daemon,
    launch_rank,
    memory_hog,
    running_ring,
    wait_for,
)

HOSTS = ["h1", "h2", "h3"]
# These tests read, damage and fill the images in the checkpoint store the coordinator sees:
# one store for all (tests/e2e/test_private_storage.py covers the stores of each host).
STORAGE = ("shared",)


@pytest.fixture
def ring(testbed3: bed.State, request: pytest.FixtureRequest) -> Iterator[RingJob]:
    yield from running_ring(testbed3, request, HOSTS)


def checkpoint(job: str, *args: str) -> tuple[int, dict[str, Any], str]:
    result = crctl("checkpoint", job, "--json", *args, check=False)
    return result.returncode, json.loads(result.stdout or "{}"), result.stderr


def listed(job: str) -> list[dict[str, Any]]:
    return list(crctl_json("checkpoints", job))


def latest(job: str) -> str:
    return str(crctl_json("status", job)["latest_checkpoint"])


def verify_manifest(directory: Path) -> dict[str, Any]:
    manifest = json.loads((directory / "manifest.json").read_text())
    files = [f for rank in manifest["ranks"] for f in rank["files"]]
    assert files, "a manifest lists the image files"
    for entry in files:
        path = directory / entry["path"]
        assert path.stat().st_size == int(entry["size"]), entry["path"]
        # New manifests record BLAKE3 (computed here by the library itself) and no sha256.
        assert entry["algorithm"] == "DIGEST_ALGORITHM_BLAKE3", entry["path"]
        assert blake3.blake3(path.read_bytes()).hexdigest() == entry["digest"], entry["path"]
        assert "sha256" not in entry, entry["path"]
    return manifest


def assert_no_dump_locks(testbed: bed.State) -> None:
    """No host keeps a lock of dumped connections, CRIU's or crctl's (removed in the
    background once the ranks run)."""
    for host in HOSTS:
        wait_for(
            lambda host=host: (
                not re.search(
                    r"CRIU-|crctl-ckpt-",
                    bed.exec_in_host(testbed, host, ["nft", "list", "tables"]).stdout,
                )
            ),
            timeout=5,
            what=f"the dump's lock removed on {host}",
        )


def test_ten_leave_running_checkpoints_all_commit_and_the_ring_never_errs(
    testbed3: bed.State, ring: RingJob
) -> None:
    ids = []
    for _ in range(10):
        code, outcome, stderr = checkpoint(ring.job, "--leave-running")
        assert code == 0, stderr
        assert outcome["committed"] is True
        assert sorted(r["host"] for r in outcome["ranks"]) == HOSTS
        ids.append(outcome["checkpoint"])
        ring.wait_for_progress(tokens=5)
    assert len(set(ids)) == 10
    assert ring.errors() == []
    records = {c["checkpoint"]: c for c in listed(ring.job)}
    kept = [i for i in ids if i in records]
    assert kept == ids[-3:], "retention keeps the newest three"
    assert records[ids[-1]]["latest"] is True
    for checkpoint_id in kept:
        manifest = verify_manifest(Path(records[checkpoint_id]["directory"]))
        assert manifest["checkpoint"] == checkpoint_id
        assert [r["rank"] for r in manifest["ranks"]] == [0, 1, 2]
    status = crctl_json("status", ring.job)
    assert all(r["state"] == "running" for r in status["ranks"])
    assert_no_dump_locks(testbed3)


def test_a_checkpoint_without_leave_running_stops_every_rank_and_becomes_latest(
    testbed3: bed.State, ring: RingJob
) -> None:
    code, outcome, stderr = checkpoint(ring.job)
    assert code == 0, stderr
    status = crctl_json("status", ring.job)
    assert status["state"] == "stopped"
    assert [r["state"] for r in status["ranks"]] == ["checkpointed"] * 3
    assert status["latest_checkpoint"] == outcome["checkpoint"]
    for rank in status["ranks"]:
        wait_for(
            lambda pid=rank["pid"]: not Path(f"/proc/{pid}").exists(),
            timeout=5,
            what=f"rank pid {rank['pid']} gone",
        )
    records = listed(ring.job)
    assert records[0]["latest"] and records[0]["state"] == "committed"
    verify_manifest(Path(records[0]["directory"]))
    assert ring.errors() == []
    for host in HOSTS:  # no lock of the dumped connections is left (CRIU's or crctl's)
        wait_for(
            lambda host=host: (
                not re.search(
                    r"CRIU-|crctl-ckpt-",
                    bed.exec_in_host(testbed3, host, ["nft", "list", "tables"]).stdout,
                )
            ),
            timeout=5,
            what=f"the dump's lock removed on {host}",
        )


def test_crctl_verify_passes_a_committed_checkpoint_and_names_every_damaged_file(
    testbed3: bed.State, ring: RingJob
) -> None:
    """`crctl verify` has the coordinator read every image of a committed checkpoint against
    its manifest, restoring nothing: exit 0 as committed; with one byte of a page image flipped
    and another image truncated, exit 1 naming both, and the checkpoint is marked damaged (no
    longer offered: the job has no good checkpoint left); put back, it verifies again and is
    the job's latest once more."""
    code, outcome, stderr = checkpoint(ring.job, "--leave-running")
    assert code == 0, stderr
    checkpoint_id = outcome["checkpoint"]
    result = crctl("verify", ring.job)
    assert f"{checkpoint_id} of {ring.job}: all " in result.stdout, result.stdout
    report = crctl_json("verify", ring.job, "--checkpoint", checkpoint_id)
    directory = Path(report["directory"])
    manifest = verify_manifest(directory)
    assert report["ok"] is True and report["problems"] == []
    assert report["files"] == sum(len(r["files"]) for r in manifest["ranks"])

    pages = next((directory / "rank-1").glob("pages-*.img"))
    truncated = directory / "rank-2" / "files.img"
    originals = {path: path.read_bytes() for path in (pages, truncated)}
    size = len(originals[truncated])
    damaged = bytearray(originals[pages])
    damaged[len(damaged) // 2] ^= 0x01
    try:
        pages.write_bytes(damaged)
        truncated.write_bytes(originals[truncated][: size // 2])
        result = crctl("verify", ring.job, check=False)
        assert result.returncode == 1, result.stderr
        assert f"rank-1/{pages.name}: blake3 " in result.stderr
        assert f"rank-2/files.img: size {size // 2}, expected {size}" in result.stderr
        result = crctl("verify", ring.job, "--checkpoint", checkpoint_id, "--json", check=False)
        assert result.returncode == 1
        assert [(p["path"], p["kind"]) for p in json.loads(result.stdout)["problems"]] == [
            (f"rank-1/{pages.name}", "digest"),
            ("rank-2/files.img", "size"),
        ]
        assert listed(ring.job)[0]["state"] == "damaged"
        assert crctl_json("status", ring.job)["latest_checkpoint"] == ""
    finally:
        for path, data in originals.items():
            path.write_bytes(data)
    crctl("verify", ring.job, "--checkpoint", checkpoint_id)
    assert latest(ring.job) == checkpoint_id
    assert listed(ring.job)[0]["state"] == "committed"
    assert crctl("verify", "no-such-job", check=False).returncode == 4
    assert ring.errors() == []


def test_a_full_checkpoint_store_aborts_with_the_reason_and_loses_nothing(
    testbed3: bed.State, ring: RingJob
) -> None:
    code, first, _ = checkpoint(ring.job, "--leave-running")
    assert code == 0
    store = Path(testbed3.directory) / "checkpoints" / ring.job
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "crctl-full", str(store)], check=True)
    try:
        code, outcome, stderr = checkpoint(ring.job, "--leave-running")
        assert code == 7, stderr
        assert "No space left on device" in outcome["reason"]
        assert latest(ring.job) == first["checkpoint"]
        ring.wait_for_progress(tokens=20)
        assert ring.errors() == []
    finally:
        subprocess.run(["umount", "-l", str(store)], check=True)
    records = {c["checkpoint"]: c for c in listed(ring.job)}
    assert records[first["checkpoint"]]["latest"]
    verify_manifest(Path(records[first["checkpoint"]]["directory"]))


def test_an_agent_killed_during_prepare_aborts_and_the_ring_runs_on_without_it(
    testbed3: bed.State, ring: RingJob
) -> None:
    code, first, _ = checkpoint(ring.job, "--leave-running")
    assert code == 0
    # A big rank on h2 makes its dump slow: h2's ranks are frozen when its agent dies.
    launch_rank(ring.job, "h2", *memory_hog(1024))
    time.sleep(2)  # let it touch its memory
    running = crctl_background(
        "checkpoint", ring.job, "--leave-running", "--json", "--timeout", "3"
    )
    try:
        time.sleep(0.6)
        kill_daemon(bed.agent_process("h2"))
        out, err = running.communicate(timeout=30)
        assert running.returncode == 7, err
        outcome = json.loads(out)
        assert outcome["committed"] is False
        assert outcome["failed_host"] == "h2"
        assert latest(ring.job) == first["checkpoint"]
        # no agent on h2, yet its ranks are not left frozen: the ring runs on
        ring.wait_for_progress(tokens=20, timeout=30)
        assert ring.errors() == []
    finally:
        running.kill()
        crctl("testbed", "start", bed.agent_process("h2"))
    aborted = [c for c in listed(ring.job) if c["checkpoint"] == outcome["checkpoint"]]
    assert aborted[0]["state"] == "aborted"
    assert not Path(aborted[0]["directory"]).exists(), "partial images are removed"
    wait_for(lambda: crctl_json("agents")[1]["state"] == "alive", timeout=10, what="h2 back")
    assert_no_dump_locks(testbed3)  # h2's went with its thaw guard


def _undumpable_device() -> str:
    for device in ("/dev/hwrng", "/dev/cpu_dma_latency"):
        if Path(device).exists():
            return device
    raise AssertionError("no character device CRIU refuses to dump was found on this host")


def test_a_rank_criu_cannot_dump_aborts_with_criu_reason_and_harms_nothing(
    testbed3: bed.State, ring: RingJob
) -> None:
    code, first, _ = checkpoint(ring.job, "--leave-running")
    assert code == 0
    device = _undumpable_device()
    launch_rank(
        ring.job,
        "h3",
        sys.executable,
        "-c",
        f"import time; f = open({device!r}, 'rb'); time.sleep(3600)",
    )
    code, outcome, stderr = checkpoint(ring.job, "--leave-running")
    assert code == 7
    assert outcome["failed_host"] == "h3"
    assert "rank 3" in outcome["reason"] and "Can't dump file" in outcome["reason"]
    assert "aborted" in stderr and "previous checkpoint stays the latest" in stderr
    assert latest(ring.job) == first["checkpoint"]
    ring.wait_for_progress(tokens=20)
    assert ring.errors() == []
    status = crctl_json("status", ring.job)
    assert all(r["state"] == "running" for r in status["ranks"])
    assert_no_dump_locks(testbed3)


def test_a_deadline_too_short_aborts_and_the_ring_runs_on(ring: RingJob) -> None:
    code, first, _ = checkpoint(ring.job, "--leave-running")
    assert code == 0
    code, outcome, _ = checkpoint(ring.job, "--leave-running", "--timeout", "0.001")
    assert code == 7
    assert "deadline" in outcome["reason"]
    assert latest(ring.job) == first["checkpoint"]
    ring.wait_for_progress(tokens=20)
    assert ring.errors() == []


def test_coordinator_killed_mid_checkpoint_ranks_resume_and_the_checkpoint_is_not_valid(
    testbed3: bed.State, ring: RingJob
) -> None:
    # A big rank on h3 makes its dump slow, so h1 and h2 sit frozen at post-dump meanwhile.
    launch_rank(
        ring.job,
        "h3",
        *memory_hog(1536),
    )
    time.sleep(2)  # let it touch its memory
    running = crctl_background(
        "checkpoint",
        ring.job,
        "--leave-running",
        "--json",
        "--timeout",
        "3",
        "--request-id",
        "mid-checkpoint",
    )
    try:
        time.sleep(0.8)
        kill_daemon(bed.COORDINATOR)
        frozen_since = time.monotonic()
        # prepare deadline 3 s + commit timeout + the agents' margin of 5 s
        ring.wait_for_progress(tokens=20, timeout=3 + COMMIT_TIMEOUT + 5 + 10)
        resumed_after = time.monotonic() - frozen_since
    finally:
        crctl("testbed", "start", bed.COORDINATOR)
        running.kill()
        running.communicate()
    assert resumed_after < 3 + COMMIT_TIMEOUT + 5 + 5
    assert ring.errors() == []
    wait_for(
        lambda: crctl("agents", check=False).returncode == 0, timeout=10, what="coordinator back"
    )
    records = listed(ring.job)
    assert records, "the checkpoint was recorded before the crash"
    assert all(c["state"] != "committed" for c in records)
    assert latest(ring.job) == ""
    # a retry of the same request after the restart reports the abort, never restarts it
    code, retried, _ = checkpoint(
        ring.job, "--leave-running", "--timeout", "3", "--request-id", "mid-checkpoint"
    )
    assert code == 7 and retried["checkpoint"] == records[0]["checkpoint"]
    assert "coordinator restarted" in retried["reason"]


def test_a_second_concurrent_checkpoint_is_refused_and_retries_reuse_the_first(
    ring: RingJob,
) -> None:
    """While a checkpoint runs (held in its prepare by an agent stopped with SIGSTOP, well
    within the time after which it would count as lost), a second one is refused with exit 5,
    and a retry with the first one's request id follows the first instead of starting another."""
    state = bed.status(bed.DEFAULT_DIR)
    assert state is not None
    agent = state.processes["agent-h2"]
    first: subprocess.Popen[str] | None = None
    retry: subprocess.Popen[str] | None = None
    procs.signal_process(agent, signal.SIGSTOP)
    try:
        first = crctl_background(
            "checkpoint", ring.job, "--leave-running", "--json", "--request-id", "first-request"
        )
        wait_for(
            lambda: any(c["state"] == "preparing" for c in listed(ring.job)),
            timeout=10,
            what="the first checkpoint to start",
            interval=0.02,
        )
        second = crctl("checkpoint", ring.job, "--leave-running", check=False)
        retry = crctl_background(
            "checkpoint", ring.job, "--leave-running", "--json", "--request-id", "first-request"
        )
        time.sleep(0.3)  # the retry reaches the coordinator while the first still runs
        assert first.poll() is None, "the first checkpoint ended while an agent was stopped"
    finally:
        procs.signal_process(agent, signal.SIGCONT)
    try:
        out, _ = first.communicate(timeout=60)
        retried, _ = retry.communicate(timeout=60)
    finally:
        first.kill()
        retry.kill()
    assert second.returncode == 5
    assert "already running" in second.stderr
    assert first.returncode == 0 and retry.returncode == 0
    assert json.loads(retried)["checkpoint"] == json.loads(out)["checkpoint"]
    assert len(listed(ring.job)) == 1
    assert ring.errors() == []


def test_a_rank_that_exits_on_its_own_is_reported_with_its_exit_status(
    testbed3: bed.State,
) -> None:
    launch_rank(
        "short-lived",
        "h2",
        sys.executable,
        "-c",
        "import sys; sys.exit(3)",
    )
    status = wait_for(
        lambda: (s := crctl_json("status", "short-lived"))["state"] == "stopped" and s,
        timeout=10,
        what="the rank's exit to be reported",
    )
    assert status["ranks"][0]["state"] == "exited"
    assert status["ranks"][0]["exit_status"] == 3
    assert "exited (3)" in crctl("status", "short-lived").stdout


def test_an_agent_restarted_while_its_ranks_run_adopts_them_and_checkpoints_go_on(
    testbed3: bed.State, ring: RingJob
) -> None:
    log = Path(testbed3.directory) / "agents" / "h2" / "logs" / ring.job / "rank-1.log"
    wait_for(
        lambda: log.exists() and log.read_text().count("\n") >= 1,
        timeout=15,
        what="rank 1 writing to its log",
    )
    assert kill_daemon(bed.agent_process("h2"))
    # the ranks, their stdout included, do not depend on the agent being alive
    ring.wait_for_progress(tokens=120)
    lines_without_agent = log.read_text().count("\n")
    crctl("testbed", "start", bed.agent_process("h2"))
    wait_for(
        lambda: {a["host"]: a["state"] for a in crctl_json("agents")}["h2"] == "alive",
        timeout=10,
        what="h2 back",
    )
    status = crctl_json("status", ring.job)
    assert [r["state"] for r in status["ranks"]] == ["running"] * 3
    code, outcome, stderr = checkpoint(ring.job, "--leave-running")
    assert code == 0, stderr
    assert sorted(r["host"] for r in outcome["ranks"]) == HOSTS
    ring.wait_for_progress(tokens=60)
    assert ring.errors() == []
    assert log.read_text().count("\n") > lines_without_agent


def test_ranks_that_ended_while_their_agent_was_down_are_reported_lost(
    testbed3: bed.State, ring: RingJob
) -> None:
    assert kill_daemon(bed.agent_process("h3"))
    victim = next(r for r in crctl_json("status", ring.job)["ranks"] if r["host"] == "h3")
    subprocess.run(["kill", "-9", str(victim["pid"])], check=True)
    crctl("testbed", "start", bed.agent_process("h3"))
    rank = wait_for(
        lambda: (
            next(r for r in crctl_json("status", ring.job)["ranks"] if r["host"] == "h3")
            if crctl_json("status", ring.job)["ranks"][2]["state"] == "lost"
            else None
        ),
        timeout=10,
        what="the rank reported lost",
    )
    assert rank["rank"] == 2
