"""Restarting a checkpointed 3-rank TCP ring on other emulated hosts with real CRIU: the live
connections move to the new addresses and the ring counts on with no token lost, repeated or
corrupted; every failure leaves nothing running, no lock behind, and the checkpoint
restartable."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import criu
from testbed import bed, netns
from testbed.ringjob import RING_PORT, RingJob

from .helpers import (
    copies_made,
    crctl,
    crctl_json,
    kill_daemon,
    launch_rank,
    running_ring,
    wait_for,
)

OLD = ["h1", "h2", "h3"]


@pytest.fixture
def ring(testbed6: bed.State, request: pytest.FixtureRequest) -> Iterator[RingJob]:
    yield from running_ring(testbed6, request, OLD)


def checkpoint_and_stop(ring: RingJob) -> dict[str, Any]:
    result = crctl("checkpoint", ring.job, "--json")
    outcome: dict[str, Any] = json.loads(result.stdout)
    wait_for(
        lambda: crctl_json("status", ring.job)["state"] == "stopped",
        timeout=10,
        what="ranks stopped",
    )
    return outcome


def restart(ring: RingJob, *args: str) -> tuple[int, dict[str, Any], str]:
    result = crctl("restart", ring.job, "--json", *args, check=False)
    return result.returncode, json.loads(result.stdout or "{}"), result.stderr


def ranks_by_host(job: str) -> dict[int, str]:
    return {r["rank"]: r["host"] for r in crctl_json("status", job)["ranks"]}


def addresses(state: bed.State, hosts: list[str]) -> list[str]:
    return [state.hosts[h].address for h in hosts]


def socket_addresses(ring: RingJob) -> set[str]:
    found = set()
    for status in ring.statuses():
        for pair in (status.get("inbound") or []) + (status.get("outbound") or []):
            found.add(pair.rsplit(":", 1)[0])
    return found


def assert_nothing_left(state: bed.State, job: str, hosts: list[str]) -> None:
    status = crctl_json("status", job)
    assert status["state"] == "stopped"
    for host in hosts:
        tables = bed.exec_in_host(state, host, ["nft", "list", "tables"]).stdout
        assert "crctl-" not in tables, f"a restore lock is left on {host}: {tables}"
        left = working_copies(state, host)
        assert left == [], f"working copies left on {host}: {left}"
    assert lazy_pages_daemons(state) == {}
    cgroups = Path("/sys/fs/cgroup/freezer/crctl") / job
    pids = [p for f in cgroups.glob("*/cgroup.procs") for p in f.read_text().split()]
    assert pids == [], f"processes left in {job}'s cgroups: {pids}"


def lazy_pages_daemons(state: bed.State) -> dict[Path, int]:
    """CRIU lazy-pages daemons still running for this testbed's agents."""
    return criu.running_daemons(Path(state.directory))


def working_copies(state: bed.State, host: str) -> list[str]:
    restores = bed.host_work_dir(state, host) / "restores"
    return sorted(str(p.relative_to(restores)) for p in restores.rglob("*"))


def restored_lazily(state: bed.State, host: str) -> list[bool]:
    """What each restore on ``host`` chose, from its agent's log."""
    log_path = Path(state.directory) / "logs" / f"{bed.agent_process(host)}.log"
    events = [
        json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")
    ]
    return [e["lazy_pages"] for e in events if e.get("event") == "restore_prepared"]


@pytest.mark.parametrize("pages", ["lazy", "eager"])
def test_a_ring_moves_to_new_hosts_and_counts_on_over_the_new_addresses(
    testbed6: bed.State, ring: RingJob, pages: str
) -> None:
    """By default the ranks run as soon as they are restored and their memory follows
    (post-copy); --eager-pages restores it all first. Either way the ring counts on."""
    checkpoint_and_stop(ring)
    stopped_at = [s["last_sequence"] for s in ring.statuses()]

    extra = ["--eager-pages"] if pages == "eager" else []
    code, outcome, stderr = restart(ring, "--map", "h1=h4,h2=h5,h3=h6", *extra)

    assert code == 0, stderr
    assert restored_lazily(testbed6, "h4")[-1] is (pages == "lazy")
    assert outcome["restarted"] is True
    assert ranks_by_host(ring.job) == {0: "h4", 1: "h5", 2: "h6"}
    ring.wait_for_progress(tokens=30)
    assert ring.errors() == []
    now = [s["last_sequence"] for s in ring.statuses()]
    assert all(n > s for n, s in zip(now, stopped_at, strict=True))
    assert socket_addresses(ring) == set(addresses(testbed6, ["h4", "h5", "h6"]))
    established = bed.exec_in_host(testbed6, "h4", ["ss", "-tn", "state", "established"]).stdout
    assert f"{testbed6.hosts['h4'].address}:{RING_PORT}" in established
    # every page is in by now: the daemons are gone, and so are the working copies
    wait_for(lambda: not lazy_pages_daemons(testbed6), timeout=10, what="lazy-pages daemons gone")
    wait_for(
        lambda: not any(working_copies(testbed6, h) for h in ("h4", "h5", "h6")),
        timeout=10,
        what="working copies removed",
    )


def test_restart_packed_onto_two_hosts(testbed6: bed.State, ring: RingJob) -> None:
    checkpoint_and_stop(ring)
    code, _, stderr = restart(ring, "--hosts", "h4,h5")
    assert code == 0, stderr
    assert ranks_by_host(ring.job) == {0: "h4", 1: "h5", 2: "h4"}
    ring.wait_for_progress(tokens=30)
    assert ring.errors() == []
    assert socket_addresses(ring) == set(addresses(testbed6, ["h4", "h5"]))


def test_two_round_trips_out_and_back(testbed6: bed.State, ring: RingJob) -> None:
    for _ in range(2):
        checkpoint_and_stop(ring)
        code, _, stderr = restart(ring, "--map", "h1=h4,h2=h5,h3=h6")
        assert code == 0, stderr
        ring.wait_for_progress(tokens=20)
        checkpoint_and_stop(ring)
        code, _, stderr = restart(ring, "--map", "h4=h1,h5=h2,h6=h3")
        assert code == 0, stderr
        assert ranks_by_host(ring.job) == {0: "h1", 1: "h2", 2: "h3"}
        ring.wait_for_progress(tokens=20)
    assert ring.errors() == []
    assert socket_addresses(ring) == set(addresses(testbed6, OLD))


def test_the_same_checkpoint_restarts_twice_in_turn(testbed6: bed.State, ring: RingJob) -> None:
    first = checkpoint_and_stop(ring)
    for hosts in ("h4,h5,h6", "h1,h2,h3"):
        code, outcome, stderr = restart(ring, "--checkpoint", first["checkpoint"], "--hosts", hosts)
        assert code == 0, stderr
        assert outcome["checkpoint"] == first["checkpoint"]
        ring.wait_for_progress(tokens=20)
        assert ring.errors() == []
        crctl("kill", ring.job)


def test_a_target_host_whose_agent_is_down_is_refused_before_anything_runs(
    testbed6: bed.State, ring: RingJob
) -> None:
    checkpoint_and_stop(ring)
    kill_daemon(bed.agent_process("h6"))
    try:
        wait_for(
            lambda: {a["host"]: a["state"] for a in crctl_json("agents")}["h6"] == "lost",
            timeout=10,
            what="h6 lost",
        )
        code, _, stderr = restart(ring, "--map", "h1=h4,h2=h5,h3=h6")
        assert code == 3, stderr
        assert "h6" in stderr and "lost" in stderr
        assert_nothing_left(testbed6, ring.job, ["h4", "h5"])
    finally:
        crctl("testbed", "start", bed.agent_process("h6"))
    wait_for(
        lambda: {a["host"]: a["state"] for a in crctl_json("agents")}["h6"] == "alive",
        timeout=10,
        what="h6 back",
    )
    code, _, stderr = restart(ring, "--map", "h1=h4,h2=h5,h3=h6")
    assert code == 0, stderr
    ring.wait_for_progress(tokens=20)


def damaged_copy_is_passed_over(state: bed.State, ring: RingJob, image: str) -> None:
    """Rank 1's images on h2 (which dumped it) damaged, its partner copy on h3 intact: `crctl
    verify` names the damaged copy and keeps the checkpoint; a restart fetches from h3."""
    outcome = checkpoint_and_stop(ring)
    checkpoint = outcome["checkpoint"]

    assert copies_made(ring.job, checkpoint, 1)[1] == ["h3"]  # rank 1's, on h3
    victim = bed.host_store(state, "h2") / ring.job / checkpoint / "rank-1" / image
    original = victim.read_bytes()
    victim.write_bytes(bytes([original[0] ^ 0xFF]) + original[1:])
    verified = crctl("verify", ring.job, "--json", check=False)
    assert verified.returncode == 1
    problems = json.loads(verified.stdout)["problems"]
    assert [(p["path"], p["kind"]) for p in problems] == [(f"rank-1/{image}", "copy")], problems
    assert "(on h2)" in problems[0]["detail"]
    assert crctl_json("checkpoints", ring.job)[0]["state"] == "committed"
    # Where it was: h2 reads its own copy, which differs; h3's intact one keeps it committed.
    code, failed, stderr = restart(ring)
    assert code == 1 and failed["checkpoint_damaged"] is False
    assert "its copy on h2 differs; another is on h3" in stderr, stderr
    assert crctl_json("checkpoints", ring.job)[0]["state"] == "committed"
    assert_nothing_left(state, ring.job, ["h1", "h2", "h3"])
    code, restarted, stderr = restart(ring, "--map", "h1=h4,h2=h5,h3=h6")
    assert code == 0, stderr
    assert restarted["checkpoint"] == checkpoint
    log = (state.dir / "logs" / f"{bed.agent_process('h5')}.log").read_text()
    assert '"event": "image_source_failed"' in log and '"source": "h2"' in log
    ring.wait_for_progress(tokens=20)
    assert ring.errors() == []


@pytest.mark.parametrize("image", ["pages-1.img", "files.img"])
def test_a_corrupted_image_is_refused_by_checksum_naming_the_file(
    testbed6: bed.State, ring: RingJob, image: str
) -> None:
    """A memory page image (checked while CRIU starts, before it may create any task) or any
    other image (checked before CRIU starts). The checkpoint is marked damaged, so that it is
    not offered again; put back, it verifies (`crctl verify`) and restarts. On hosts with
    stores of their own, a damaged copy is passed over for the partner's intact one."""
    if testbed6.private_storage:
        damaged_copy_is_passed_over(testbed6, ring, image)
        return
    outcome = checkpoint_and_stop(ring)
    directory = Path(crctl_json("checkpoints", ring.job)[0]["directory"])
    victim = directory / "rank-1" / image
    original = victim.read_bytes()
    victim.write_bytes(bytes([original[0] ^ 0xFF]) + original[1:])
    try:
        code, failed, stderr = restart(ring, "--map", "h1=h4,h2=h5,h3=h6")
        assert code == 1
        assert f"rank-1/{image}: blake3 " in stderr and ", expected " in stderr
        assert failed["failed_rank"] == 1 and failed["failed_host"] == "h5"
        assert f"checkpoint {outcome['checkpoint']} is marked damaged" in stderr
        assert crctl_json("checkpoints", ring.job)[0]["state"] == "damaged"
        assert_nothing_left(testbed6, ring.job, ["h4", "h5", "h6"])
    finally:
        victim.write_bytes(original)
    crctl("verify", ring.job, "--checkpoint", outcome["checkpoint"])
    code, restarted, stderr = restart(ring, "--map", "h1=h4,h2=h5,h3=h6")
    assert code == 0, stderr
    assert restarted["checkpoint"] == outcome["checkpoint"]
    ring.wait_for_progress(tokens=20)
    assert ring.errors() == []


def test_a_plugin_hook_that_raises_fails_the_restart_closed(
    testbed6: bed.State, ring: RingJob
) -> None:
    checkpoint_and_stop(ring)
    code, _, stderr = restart(
        ring, "--map", "h1=h4,h2=h5,h3=h6", "--plugin", "restart_plugins:FailingPlugin"
    )
    assert code == 1
    assert "plugin failing failed in after_restore" in stderr
    assert "test says no" in stderr
    assert_nothing_left(testbed6, ring.job, ["h4", "h5", "h6"])
    code, _, stderr = restart(ring, "--map", "h1=h4,h2=h5,h3=h6")
    assert code == 0, stderr
    ring.wait_for_progress(tokens=20)


def test_a_port_taken_on_a_target_host_is_refused_naming_it(
    testbed6: bed.State, ring: RingJob
) -> None:
    checkpoint_and_stop(ring)
    address = testbed6.hosts["h5"].address
    squatter = subprocess.Popen(
        [
            *netns.nsenter_prefix(testbed6.hosts["h5"].namespace),
            sys.executable,
            "-c",
            "import socket, time; s = socket.socket(); "
            f"s.bind(({address!r}, {RING_PORT + 1})); s.listen(); time.sleep(3600)",
        ]
    )
    try:
        wait_for(
            lambda: f":{RING_PORT + 1}" in bed.exec_in_host(testbed6, "h5", ["ss", "-tln"]).stdout,
            timeout=10,
            what="the squatter listening",
        )
        code, failed, stderr = restart(ring, "--map", "h1=h4,h2=h5,h3=h6")
        assert code == 1
        assert f"port {RING_PORT + 1} on {address} is already taken on h5" in stderr
        assert failed["failed_rank"] == 1
        assert_nothing_left(testbed6, ring.job, ["h4", "h5", "h6"])
    finally:
        squatter.kill()
        squatter.wait()
    code, _, stderr = restart(ring, "--map", "h1=h4,h2=h5,h3=h6")
    assert code == 0, stderr
    ring.wait_for_progress(tokens=20)


def test_plugin_hooks_run_in_order_with_the_right_context(
    testbed6: bed.State, ring: RingJob, tmp_path: Path
) -> None:
    outcome = checkpoint_and_stop(ring)
    record = tmp_path / "hooks.jsonl"
    code, _, stderr = restart(
        ring,
        "--map",
        "h1=h4,h2=h5,h3=h6",
        "--plugin",
        "restart_plugins:RecordingPlugin",
        "--plugin-option",
        f"record_to={record}",
    )
    assert code == 0, stderr
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    for rank, (old, new) in enumerate([("h1", "h4"), ("h2", "h5"), ("h3", "h6")]):
        mine = [c for c in calls if c["rank"] == rank]
        assert [c["hook"] for c in mine] == ["before_restore", "after_restore", "before_resume"]
        assert all(c["old_host"] == old and c["new_host"] == new for c in mine)
        assert all(c["job"] == ring.job and c["checkpoint"] == outcome["checkpoint"] for c in mine)
        assert mine[0]["pid"] is None and mine[0]["images_dir_exists"]
        assert mine[1]["pid"] == mine[2]["pid"] == ranks_pid(ring.job, rank)
        assert mine[0]["address_map"][testbed6.hosts[old].address] == testbed6.hosts[new].address
        assert mine[0]["moves"][old] == [new, [testbed6.hosts[new].address]]
    # every rank's before_restore ran before any rank's before_resume
    hooks = [c["hook"] for c in calls]
    assert max(i for i, h in enumerate(hooks) if h == "before_restore") < min(
        i for i, h in enumerate(hooks) if h == "before_resume"
    )
    ring.wait_for_progress(tokens=20)


def ranks_pid(job: str, rank: int) -> int:
    return int(next(r["pid"] for r in crctl_json("status", job)["ranks"] if r["rank"] == rank))


def test_host_files_rewrites_peers_files_the_ranks_read(
    testbed6: bed.State, ring: RingJob, tmp_path: Path
) -> None:
    peers = tmp_path / "peers.txt"
    peers.write_text(
        "".join(f"{h} {testbed6.hosts[h].address}:{RING_PORT + i}\n" for i, h in enumerate(OLD))
        + "h10 198.18.0.111\n"
    )
    checkpoint_and_stop(ring)
    code, _, stderr = restart(
        ring, "--map", "h1=h4,h2=h5,h3=h6", "--plugin-option", f"rewrite_files={peers}"
    )
    assert code == 0, stderr
    expected = (
        "".join(
            f"{h} {testbed6.hosts[h].address}:{RING_PORT + i}\n"
            for i, h in enumerate(["h4", "h5", "h6"])
        )
        + "h10 198.18.0.111\n"
    )
    assert peers.read_text() == expected
    ring.wait_for_progress(tokens=20)


def test_restart_of_an_unknown_job_or_checkpoint_exits_with_a_clear_message(
    ring: RingJob,
) -> None:
    unknown = crctl("restart", "no-such-job", check=False)
    assert unknown.returncode == 4 and "unknown job 'no-such-job'" in unknown.stderr
    running = crctl("restart", ring.job, check=False)
    assert running.returncode == 5 and f"crctl kill {ring.job}" in running.stderr
    checkpoint_and_stop(ring)
    missing = crctl("restart", ring.job, "--checkpoint", "ckpt-nope", check=False)
    assert missing.returncode == 4 and "no checkpoint ckpt-nope" in missing.stderr
    malformed = crctl("restart", ring.job, "--map", "h1:h4", check=False)
    assert malformed.returncode == 2 and "malformed host map entry 'h1:h4'" in malformed.stderr


def test_connections_outside_the_job_are_refused_or_restored_closed(
    testbed6: bed.State, ring: RingJob, tmp_path: Path
) -> None:
    bridge = str(netns.BRIDGE_ADDRESS)
    server = socket.create_server((bridge, 7999))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                while not stop.is_set():
                    try:
                        conn.sendall(b"tick")
                    except OSError:
                        break
                    time.sleep(0.05)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    status = tmp_path / "outside.json"
    try:
        launch_rank(
            ring.job,
            "h1",
            sys.executable,
            str(Path(__file__).parents[1] / "workloads" / "outside_client.py"),
            "--connect",
            bridge,
            "--port",
            "7999",
            "--status",
            str(status),
        )
        wait_for(
            lambda: status.exists() and json.loads(status.read_text())["received"] > 0,
            timeout=10,
            what="the outside stream flowing",
        )

        refused = crctl("checkpoint", ring.job, check=False)
        assert refused.returncode == 7
        assert f"{bridge}:7999" in refused.stderr and "--external close" in refused.stderr
        ring.wait_for_progress(tokens=10)

        kept = crctl("checkpoint", ring.job, "--external", "close", check=False)
        assert kept.returncode == 0, kept.stderr
        code, _, stderr = restart(ring, "--map", "h1=h4,h2=h5,h3=h6")
        assert code == 0, stderr
        ring.wait_for_progress(tokens=20)
        assert ring.errors() == []
        ended = wait_for(
            lambda: json.loads(status.read_text()).get("write"),
            timeout=10,
            what="the outside client to notice its closed socket",
        )
        final = json.loads(status.read_text())
        assert final["ended"] == "eof" or final["ended"].startswith("recv error")
        assert ended.startswith("error"), "writing to a socket restored closed must fail"
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()
