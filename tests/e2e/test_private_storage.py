"""Hosts that share no storage (issue 14, items 1 and 2), with real CRIU: each emulated host
has its own /tmp, /dev/shm, agent work directory and checkpoint store, as cluster nodes
sharing only home directories would. A ring moves to hosts that never saw its images (they
fetch them from the hosts that dumped them), a checkpoint survives the removal of a host's
store (restored from the partner copies made after the commit), spreads and packs, and is
verified where its copies are."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import bed
from testbed.ringjob import RingJob

from .helpers import copies_made, crctl, crctl_json, kill_daemon, running_ring, wait_for
from .test_restart import assert_nothing_left, checkpoint_and_stop, ranks_by_host, restart
from .test_spread import PACKED, SPREAD, counts_on

pytestmark = pytest.mark.e2e


@pytest.fixture
def ring(private6: bed.State, request: pytest.FixtureRequest) -> Iterator[RingJob]:
    yield from running_ring(private6, request, ["h1", "h2", "h3"])


def images_in(state: bed.State, host: str, job: str, checkpoint: str) -> set[str]:
    """The rank folders of a checkpoint in a host's own store."""
    folder = bed.host_store(state, host) / job / checkpoint
    return {p.name for p in folder.glob("rank-*")} if folder.is_dir() else set()


def test_a_ring_moves_to_hosts_that_never_saw_its_images_and_back(
    private6: bed.State, ring: RingJob
) -> None:
    outcome = checkpoint_and_stop(ring)
    checkpoint = outcome["checkpoint"]
    # Each host's store holds its own ranks only, the coordinator's folder the manifest only.
    for rank, host in enumerate(["h1", "h2", "h3"]):
        assert f"rank-{rank}" in images_in(private6, host, ring.job, checkpoint)
    assert images_in(private6, "h5", ring.job, checkpoint) == set()  # h4 may have h3's copy
    coordinator_folder = bed.checkpoint_dir(private6) / ring.job / checkpoint
    assert sorted(p.name for p in coordinator_folder.iterdir()) == ["manifest.json"]

    code, _, stderr = restart(ring, "--map", "h1=h4,h2=h5,h3=h6")
    assert code == 0, stderr
    assert ranks_by_host(ring.job) == {0: "h4", 1: "h5", 2: "h6"}
    assert "rank-1" in images_in(private6, "h5", ring.job, checkpoint)  # fetched
    ring.wait_for_progress(tokens=30)
    assert ring.errors() == []

    checkpoint_and_stop(ring)
    code, _, stderr = restart(ring, "--map", "h4=h1,h5=h2,h6=h3")
    assert code == 0, stderr
    ring.wait_for_progress(tokens=30)
    assert ring.errors() == []


def test_a_checkpoint_whose_source_store_was_removed_restarts_from_the_partner_copies(
    private6: bed.State, ring: RingJob
) -> None:
    checkpoint = checkpoint_and_stop(ring)["checkpoint"]
    copies = copies_made(ring.job, checkpoint, 1)
    assert copies == {0: ["h2"], 1: ["h3"], 2: ["h4"]}  # each host's next one
    listing = crctl("checkpoints", ring.job).stdout
    assert "h1+h2 h2+h3 h3+h4" in listing, listing
    assert "rank-0" in images_in(private6, "h2", ring.job, checkpoint)

    shutil.rmtree(bed.host_store(private6, "h1") / ring.job / checkpoint)
    verified = crctl("verify", ring.job, "--json", check=False)
    assert verified.returncode != 0 and "rank-0" in verified.stdout  # h1's copy is gone

    code, result, stderr = restart(ring, "--map", "h1=h5,h2=h6,h3=h4")
    assert code == 0, stderr
    assert result["restarted"] is True
    ring.wait_for_progress(tokens=30)
    assert ring.errors() == []


def test_a_restart_whose_only_copy_is_on_a_lost_host_is_refused_naming_it(
    private6: bed.State, ring: RingJob
) -> None:
    checkpoint = checkpoint_and_stop(ring)["checkpoint"]
    copies_made(ring.job, checkpoint, 1)
    # rank 2 is on h3 and its copy on h4: remove h4's copy and stop h3's agent
    shutil.rmtree(bed.host_store(private6, "h4") / ring.job / checkpoint)
    assert kill_daemon("agent-h3")
    try:
        wait_for(lambda: crctl_json("agents")[2]["state"] == "lost", timeout=15,
                 what="h3 lost")  # fmt: skip
        code, _, stderr = restart(ring, "--map", "h1=h5,h2=h6,h3=h1")
        assert code != 0
        assert "no such file" in stderr or "rank 2" in stderr, stderr
        # h4 lacks its copy, but h3, out of reach, may hold an intact one: not marked damaged
        assert (
            f"checkpoint {checkpoint} stays committed: rank 2's images were not read from "
            "every copy (h3 (not reachable now) may hold an intact copy)" in stderr
        )
        assert f"checkpoint {checkpoint} stays restartable" in stderr
        assert crctl_json("checkpoints", ring.job)[0]["state"] == "committed"
        assert crctl_json("status", ring.job)["state"] == "stopped"
    finally:
        crctl("testbed", "start", "agent-h3")
        wait_for(lambda: crctl_json("agents")[2]["state"] == "alive", timeout=20,
                 what="h3 back")  # fmt: skip
    # with h3 back its own images restore rank 2
    code, _, stderr = restart(ring, "--map", "h1=h5,h2=h6,h3=h3")
    assert code == 0, stderr
    ring.wait_for_progress(tokens=20)
    assert ring.errors() == []


def test_a_rank_damaged_on_every_host_that_holds_it_marks_the_checkpoint_damaged(
    private6: bed.State, ring: RingJob
) -> None:
    """Rank 1's page image flipped on h2, which dumped it, and on h3, its partner: the restart
    fails, the checkpoint is marked damaged and the older one becomes the job's latest."""
    good = crctl_json("checkpoint", ring.job, "--leave-running")["checkpoint"]
    bad = checkpoint_and_stop(ring)["checkpoint"]
    assert copies_made(ring.job, bad, 1)[1] == ["h3"]
    for host in ("h2", "h3"):
        victim = bed.host_store(private6, host) / ring.job / bad / "rank-1" / "pages-1.img"
        original = victim.read_bytes()
        victim.write_bytes(bytes([original[0] ^ 0xFF]) + original[1:])
    code, failed, stderr = restart(ring, "--map", "h1=h4,h2=h5,h3=h6")
    assert code == 1
    assert "h2: rank-1/pages-1.img does not match the manifest" in stderr, stderr
    assert "h3: rank-1/pages-1.img does not match the manifest" in stderr, stderr
    assert f"checkpoint {bad} is marked damaged and the latest good checkpoint is now {good}" in (
        stderr
    )
    assert failed["failed_rank"] == 1 and failed["checkpoint_damaged"] is True
    assert "stays restartable" not in stderr
    assert {c["checkpoint"]: c["state"] for c in crctl_json("checkpoints", ring.job)} == {
        good: "committed",
        bad: "damaged",
    }
    assert_nothing_left(private6, ring.job, ["h4", "h5", "h6"])
    code, restarted, stderr = restart(ring, "--map", "h1=h4,h2=h5,h3=h6")
    assert code == 0, stderr
    assert restarted["checkpoint"] == good
    ring.wait_for_progress(tokens=20)
    assert ring.errors() == []


def test_a_partner_copy_that_failed_is_made_again(private6: bed.State, ring: RingJob) -> None:
    """h2 fails its copy of h1's images (a failpoint standing for a full disk): the checkpoint
    is listed without that copy, and image_retry_after later the coordinator has it made by
    the next host, h3."""
    failpoints = bed.failpoints_file(private6, "agent-h2")
    failpoints.parent.mkdir(parents=True, exist_ok=True)
    failpoints.write_text("agent.images.copy=error:no space left on device (failpoint)\n")
    try:
        checkpoint = crctl_json("checkpoint", ring.job, "--leave-running")["checkpoint"]
        log = private6.dir / "logs" / f"{bed.COORDINATOR}.log"
        wait_for(lambda: '"event": "checkpoint_copy_failed"' in log.read_text(), timeout=20,
                 what="h2's copy failed")  # fmt: skip
        listed = next(
            c for c in crctl_json("checkpoints", ring.job) if c["checkpoint"] == checkpoint
        )
        rank_0 = next(r for r in listed["manifest"]["ranks"] if r["rank"] == 0)
        assert rank_0.get("copies", []) == []  # not yet
        assert copies_made(ring.job, checkpoint, 1) == {0: ["h3"], 1: ["h3"], 2: ["h4"]}
    finally:
        failpoints.unlink(missing_ok=True)
    assert "h1+h3 h2+h3 h3+h4" in crctl("checkpoints", ring.job).stdout
    assert "rank-0" in images_in(private6, "h3", ring.job, checkpoint)
    assert "rank-0" not in images_in(private6, "h2", ring.job, checkpoint)


def agents_are(state: str, *hosts: str) -> None:
    def states() -> set[str]:
        return {a["state"] for a in crctl_json("agents") if a["host"] in hosts}

    wait_for(lambda: states() == {state}, timeout=20, what=f"{', '.join(hosts)} {state}")


def test_a_restart_passes_over_the_latest_checkpoint_when_every_copy_of_a_rank_is_out_of_reach(
    private6: bed.State, ring: RingJob
) -> None:
    """The latest checkpoint's rank 1 is on h5 and its copy on h6, both agents gone: `crctl
    checkpoints` says it is not restorable, a restart naming none starts from the older one
    (on the hosts the map sends the latest's ranks to), naming the one it passed over."""
    older = checkpoint_and_stop(ring)["checkpoint"]  # dumped on h1-h3
    code, _, stderr = restart(ring, "--map", "h1=h4,h2=h5,h3=h6")
    assert code == 0, stderr
    ring.wait_for_progress(tokens=10)
    latest = checkpoint_and_stop(ring)["checkpoint"]  # dumped on h4-h6
    assert copies_made(ring.job, latest, 1) == {0: ["h5"], 1: ["h6"], 2: ["h1"]}
    for host in ("h5", "h6"):
        assert kill_daemon(f"agent-{host}")
    try:
        agents_are("lost", "h5", "h6")
        listed = {c["checkpoint"]: c for c in crctl_json("checkpoints", ring.job)}
        assert listed[latest]["unreachable"] == "rank 1 (only on h5 (lost), h6 (lost))"
        assert listed[older]["unreachable"] == ""
        assert "not restorable: rank 1 (only on h5" in crctl("checkpoints", ring.job).stdout
        code, result, stderr = restart(ring, "--map", "h4=h1,h5=h2,h6=h3")
        assert code == 0, stderr
        assert result["checkpoint"] == older
        assert result["passed_over"] == [
            {
                "checkpoint": latest,
                "reason": "no reachable copy of rank 1 (only on h5 (lost), h6 (lost))",
            }
        ]
        assert ranks_by_host(ring.job) == {0: "h1", 1: "h2", 2: "h3"}
        ring.wait_for_progress(tokens=20)
        assert ring.errors() == []
        assert crctl_json("status", ring.job)["latest_checkpoint"] == latest  # for h5, h6 back
    finally:
        for host in ("h5", "h6"):
            crctl("testbed", "start", f"agent-{host}")
        agents_are("alive", "h5", "h6")


@pytest.fixture
def packed(private6: bed.State, request: pytest.FixtureRequest) -> Iterator[RingJob]:
    yield from running_ring(private6, request, PACKED)


def test_a_ring_packed_on_two_hosts_spreads_over_four_that_share_no_storage(
    private6: bed.State, packed: RingJob
) -> None:
    checkpoint_and_stop(packed)
    code, _, stderr = restart(packed, "--hosts", ",".join(SPREAD))
    assert code == 0, stderr
    assert ranks_by_host(packed.job) == dict(enumerate(SPREAD))
    counts_on(packed, SPREAD, private6)
    checkpoint_and_stop(packed)
    code, _, stderr = restart(packed, "--map", "h3=h1,h4=h1,h5=h2,h6=h2")
    assert code == 0, stderr
    counts_on(packed, PACKED, private6)
    time.sleep(0.5)
    crctl("kill", packed.job)
    assert_nothing_left(private6, packed.job, ["h1", "h2"])


def test_retention_drops_the_images_on_every_host_that_holds_them(
    private6: bed.State, ring: RingJob
) -> None:
    first = crctl_json("checkpoint", ring.job, "--leave-running")["checkpoint"]
    copies_made(ring.job, first, 1)
    for _ in range(3):  # retain_checkpoints = 3
        crctl("checkpoint", ring.job, "--leave-running")
    stores = [bed.host_store(private6, h) / ring.job / first for h in private6.hosts]
    wait_for(lambda: not any(Path(s).exists() for s in stores), timeout=20,
             what=f"{first} gone from every host")  # fmt: skip


def test_a_host_down_when_a_checkpoint_is_retired_drops_its_images_once_back(
    private6: bed.State, ring: RingJob
) -> None:
    first = crctl_json("checkpoint", ring.job, "--leave-running")["checkpoint"]
    assert copies_made(ring.job, first, 1)[2] == ["h4"]  # rank 2's, from h3
    partner_copy = bed.host_store(private6, "h4") / ring.job / first
    assert kill_daemon("agent-h4")
    try:
        agents_are("lost", "h4")
        for _ in range(3):  # retain_checkpoints = 3: the first is retired
            crctl("checkpoint", ring.job, "--leave-running")
        assert first not in {c["checkpoint"] for c in crctl_json("checkpoints", ring.job)}
        dumped = [bed.host_store(private6, h) / ring.job / first for h in ("h1", "h2", "h3")]
        wait_for(lambda: not any(s.exists() for s in dumped), timeout=20,
                 what=f"{first} gone from h1-h3")  # fmt: skip
        assert (partner_copy / "rank-2").is_dir()  # h4 was down: nobody could drop it
    finally:
        crctl("testbed", "start", "agent-h4")
        agents_are("alive", "h4")
    wait_for(lambda: not partner_copy.exists(), timeout=20, what=f"{first} dropped on h4")
