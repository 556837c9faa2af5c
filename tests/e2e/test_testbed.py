"""The foundation on a real 3-host testbed: separate coordinator and agent processes talking
CurveZMQ across network namespaces, durable coordinator state, and a clean teardown."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from crctl import keys
from testbed import bed, netns

from .conftest import LOST_AFTER, coordinator_log
from .helpers import agent_states, crctl, crctl_json, kill_daemon, wait_for


def test_all_agents_register_with_distinct_addresses(testbed3: bed.State) -> None:
    agents = crctl_json("agents")
    assert sorted(a["host"] for a in agents) == ["h1", "h2", "h3"]
    assert all(a["state"] == "alive" for a in agents)
    addresses = [a["addresses"] for a in agents]
    assert all(len(a) == 1 for a in addresses)
    assert len({a[0] for a in addresses}) == 3
    for agent in agents:
        assert agent["addresses"] == [testbed3.hosts[agent["host"]].address]
        assert agent["criu_version"].startswith("4.")
        assert "criu" in agent["capabilities"]


def test_killed_agent_is_lost_within_the_timeout_and_alive_after_restart(
    testbed3: bed.State,
) -> None:
    name = bed.agent_process("h2")
    killed_at = time.monotonic()
    assert kill_daemon(name)

    wait_for(lambda: agent_states()["h2"] == "lost", timeout=LOST_AFTER + 2, what="h2 lost")
    assert time.monotonic() - killed_at <= LOST_AFTER + 2
    assert agent_states()["h1"] == "alive"

    crctl("testbed", "start", name)
    wait_for(lambda: agent_states()["h2"] == "alive", timeout=10, what="h2 alive again")
    assert "agent_lost" in coordinator_log(testbed3)


def _agents_if_answering() -> dict[str, dict[str, object]] | None:
    result = crctl("agents", "--json", check=False)
    if result.returncode != 0:
        return None
    return {a["host"]: a for a in json.loads(result.stdout)}


def test_coordinator_restarted_after_sigkill_still_knows_the_agents(testbed3: bed.State) -> None:
    before = {a["host"]: a for a in crctl_json("agents")}
    assert kill_daemon(bed.COORDINATOR)
    unreachable = crctl("agents", check=False)
    assert unreachable.returncode == 3
    assert "coordinator unreachable" in unreachable.stderr

    crctl("testbed", "start", bed.COORDINATOR)
    after = wait_for(_agents_if_answering, timeout=10, what="coordinator answering")
    assert set(after) == set(before)
    for host, agent in after.items():
        assert agent["addresses"] == before[host]["addresses"]
        assert agent["registered_at"] == before[host]["registered_at"]
    # the agents reconnect by themselves and keep heartbeating to the new coordinator
    wait_for(
        lambda: all(s == "alive" for s in agent_states().values()),
        timeout=10,
        what="all alive after coordinator restart",
    )
    t0 = {a["host"]: a["last_heartbeat"] for a in crctl_json("agents")}
    time.sleep(1.5)
    t1 = {a["host"]: a["last_heartbeat"] for a in crctl_json("agents")}
    assert all(t1[h] > t0[h] for h in t0)


def test_agent_with_wrong_credentials_is_refused_and_logged(
    testbed3: bed.State, tmp_path: Path
) -> None:
    rogue_keys = tmp_path / "keys"
    # a key pair named h1, but not the one the coordinator allows
    keys.init_keys(rogue_keys, ["h1"])
    (rogue_keys / "coordinator.key").write_bytes(
        (Path(testbed3.directory) / "keys" / "coordinator.key").read_bytes()
    )
    log = tmp_path / "rogue.log"
    with log.open("w") as out:
        rogue = subprocess.Popen(
            [
                *netns.nsenter_prefix(testbed3.hosts["h1"].namespace),
                sys.executable,
                "-m",
                "cli",
                "agent",
                "--host",
                "h1",
                "--keys-dir",
                str(rogue_keys),
                "--control-endpoint",
                testbed3.control_endpoint,
                "--log-format",
                "json",
            ],
            stdout=out,
            stderr=out,
        )
    try:
        wait_for(
            lambda: "coordinator_refused_us" in log.read_text(),
            timeout=10,
            what="the rogue agent to be refused",
        )
        refusals = [
            json.loads(line)
            for line in coordinator_log(testbed3).splitlines()
            if '"agent_refused"' in line
        ]
        assert any(r["reason"] == "unknown CurveZMQ key" for r in refusals)
        # the real h1 is unaffected
        assert agent_states()["h1"] == "alive"
    finally:
        rogue.kill()
        rogue.wait()
