"""Ordinary users own their jobs: real local users (made and removed here) run the installed
`crctl` on the real testbed. A user's ranks run as that user before and after a checkpoint and
a restart on other hosts; another user is refused every call on that job, and nothing either
of them asks for runs as root."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.exit_codes import ExitCode
from testbed import bed
from testbed.ringjob import RING_PORT, RingJob

from .helpers import SHARED_TMP, crctl, wait_for
from .users import as_user, crctl_as, local_users, ps_user, tree_users

pytestmark = pytest.mark.e2e

RING = Path(__file__).resolve().parents[2] / "testbed" / "ring.py"
OLD, NEW = ["h1", "h2", "h3"], ["h4", "h5", "h6"]
DENIED = int(ExitCode.PERMISSION_DENIED)


@pytest.fixture(scope="module")
def users() -> Iterator[dict[str, pwd.struct_passwd]]:
    with local_users("alice", "bob") as made:
        yield made


def status_as(user: str, job: str) -> dict[str, Any]:
    result = crctl_as(user, "status", job, "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def user_folder(user: pwd.struct_passwd) -> Path:
    """A folder of the user's own, as their programs would have (removed after the module)."""
    folder = Path(tempfile.mkdtemp(prefix=f"crctl-{user.pw_name}-", dir=SHARED_TMP))
    os.chown(folder, user.pw_uid, user.pw_gid)
    folder.chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def alice_ring(testbed6: bed.State, users: dict[str, pwd.struct_passwd]) -> Iterator[RingJob]:
    """A 3-rank TCP ring launched by alice with the installed CLI, from a folder of hers."""
    alice = users["alice"]
    folder = user_folder(alice)
    program = folder / "ring.py"
    shutil.copy(RING, program)
    os.chown(program, alice.pw_uid, alice.pw_gid)
    peers = ",".join(testbed6.hosts[h].address for h in OLD)
    job = "ring-of-alice"
    try:
        for rank, host in enumerate(OLD):
            result = crctl_as(
                "alice",
                "launch",
                "--job",
                job,
                "--host",
                host,
                "--rank",
                str(rank),
                "--",
                "/usr/bin/python3",
                str(program),
                "--rank",
                str(rank),
                "--peers",
                peers,
                "--port",
                str(RING_PORT),
                "--status",
                str(folder / f"{rank}.json"),
                "--interval",
                "0.01",
                cwd=folder,
            )
            assert result.returncode == 0, result.stderr
        ring = RingJob(job=job, hosts=OLD, status_dir=folder, api_address=testbed6.api_address)
        ring.wait_for_tokens(10, timeout=20)
        yield ring
    finally:
        if crctl("status", job, "--json", check=False).returncode == 0:
            crctl("kill", job, check=False)
        shutil.rmtree(folder, ignore_errors=True)


def rank_pids(user: str, job: str) -> dict[int, int]:
    return {r["rank"]: r["pid"] for r in status_as(user, job)["ranks"] if r["state"] == "running"}


def test_a_users_ring_runs_as_them_before_and_after_a_restart_on_other_hosts(
    alice_ring: RingJob,
) -> None:
    job = alice_ring.job
    before = rank_pids("alice", job)
    assert len(before) == 3
    for pid in before.values():
        assert ps_user(pid) == "alice"
        assert tree_users(pid) == {"alice"}
        assert Path(f"/proc/{pid}/cwd").resolve() == alice_ring.status_dir
    assert status_as("alice", job)["owner"] == "alice"

    checkpoint = crctl_as("alice", "checkpoint", job, "--json")
    assert checkpoint.returncode == 0, checkpoint.stderr
    tokens = alice_ring.tokens()
    restart = crctl_as("alice", "restart", job, "--map", "h1=h4,h2=h5,h3=h6")
    assert restart.returncode == 0, restart.stderr

    after = status_as("alice", job)
    assert sorted(r["host"] for r in after["ranks"]) == NEW
    for pid in rank_pids("alice", job).values():
        assert ps_user(pid) == "alice"
        assert tree_users(pid) == {"alice"}
    alice_ring.hosts = NEW
    alice_ring.wait_for_tokens(tokens + 30, timeout=20)
    assert alice_ring.errors() == []


def test_another_user_is_refused_every_call_on_the_job_and_nothing_changes(
    alice_ring: RingJob,
) -> None:
    job = alice_ring.job
    pids = rank_pids("alice", job)
    checkpoints = crctl_as("alice", "checkpoints", job, "--json").stdout
    for args in (
        ("kill", job),
        ("checkpoint", job),
        ("restart", job, "--map", "h4=h1"),
        ("status", job),
        ("checkpoints", job),
        ("verify", job),
        ("launch", "--job", job, "--host", "h1", "--", "id"),
    ):
        result = crctl_as("bob", *args)
        assert result.returncode == DENIED, (args, result.stdout, result.stderr)
        assert "permission denied" in result.stderr and "alice" in result.stderr, result.stderr
    listed = json.loads(crctl_as("bob", "jobs", "--json").stdout)
    assert job not in {j["job"] for j in listed}

    assert rank_pids("alice", job) == pids
    assert crctl_as("alice", "checkpoints", job, "--json").stdout == checkpoints
    alice_ring.wait_for_progress()


RAW_LAUNCH = """
import sys, grpc
from crctl.v1 import coordinator_pb2 as pb, coordinator_pb2_grpc as rpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    stub = rpc.CoordinatorStub(channel)
    request = pb.LaunchRequest(job=sys.argv[2], host="h1", rank=-1, argv=sys.argv[3:])
    try:
        print(stub.Launch(request, timeout=30).pid)
    except grpc.RpcError as exc:
        print(exc.code().name, exc.details(), file=sys.stderr)
        sys.exit(1)
"""


def test_a_raw_grpc_launch_runs_as_its_caller_and_never_as_root(
    alice_ring: RingJob, users: dict[str, pwd.struct_passwd], testbed6: bed.State
) -> None:
    """No CLI: a gRPC call of bob's own on the API socket, with an environment he chose."""
    bob = users["bob"]
    folder = user_folder(bob)
    out = folder / "id"
    try:
        raw = [sys.executable, "-c", RAW_LAUNCH, testbed6.api_address]
        into_alices = as_user("bob", *raw, alice_ring.job, "/usr/bin/id")
        assert into_alices.returncode == 1
        assert "PERMISSION_DENIED" in into_alices.stderr

        own = as_user("bob", *raw, "bobs-raw", "/bin/sh", "-c", f"id -u > {out}; sleep 60")
        assert own.returncode == 0, own.stderr
        assert ps_user(int(own.stdout)) == "bob"
        wait_for(lambda: out.exists() and out.read_text().strip(), timeout=10, what="id's output")
        assert out.read_text().strip() == str(bob.pw_uid)
        assert out.stat().st_uid == bob.pw_uid
    finally:
        crctl("kill", "bobs-raw", check=False)
        shutil.rmtree(folder, ignore_errors=True)


def test_a_working_directory_the_user_cannot_enter_is_refused_and_nothing_runs(
    testbed6: bed.State, users: dict[str, pwd.struct_passwd]
) -> None:
    result = crctl_as("alice", "launch", "--job", "alice-cwd", "--host", "h1", "--cwd", "/root",
                      "--", "/bin/sleep", "60")  # fmt: skip
    assert result.returncode != 0
    assert "cannot use '/root' as its working directory" in result.stderr, result.stderr
    assert crctl_as("alice", "status", "alice-cwd").returncode == int(ExitCode.NOT_FOUND)
    lingering = subprocess.run(["pgrep", "-u", "alice", "-f", "sleep 60"], capture_output=True)
    assert lingering.returncode == 1, lingering.stdout


def test_a_restart_on_hosts_that_do_not_know_the_owner_is_refused_in_prepare(
    testbed6: bed.State,
) -> None:
    """carol checkpoints a job, then her account goes from every host (they share the user
    database here); the restart names the host and the uid, restores nothing, and works once
    the user is back with the same uid."""
    with local_users("carol") as made:
        carol = made["carol"]
        launched = crctl_as("carol", "launch", "--job", "carols", "--host", "h1", "--",
                            "/bin/sleep", "600")  # fmt: skip
        assert launched.returncode == 0, launched.stderr
        assert crctl_as("carol", "checkpoint", "carols").returncode == 0
        subprocess.run(["userdel", "carol"], check=True, capture_output=True)
        try:
            refused = crctl("restart", "carols", "--map", "h1=h2", check=False)
            assert refused.returncode != 0
            assert f"h2 has no user with uid {carol.pw_uid}" in refused.stderr, refused.stderr
            assert crctl("status", "carols", "--json").stdout.count('"running"') == 0
        finally:
            subprocess.run(
                ["useradd", "--uid", str(carol.pw_uid), "--no-create-home", "carol"],
                check=True,
                capture_output=True,
            )
        restarted = crctl_as("carol", "restart", "carols", "--map", "h1=h2")
        assert restarted.returncode == 0, restarted.stderr
        pid = status_as("carol", "carols")["ranks"][0]["pid"]
        assert ps_user(pid) == "carol"
        crctl("kill", "carols")


def test_a_plugin_the_admin_did_not_install_is_refused_before_any_agent_imports_it(
    testbed6: bed.State, users: dict[str, pwd.struct_passwd]
) -> None:
    launched = crctl_as("alice", "launch", "--job", "alice-plugin", "--host", "h1", "--",
                        "/bin/sleep", "600")  # fmt: skip
    assert launched.returncode == 0, launched.stderr
    try:
        assert crctl_as("alice", "checkpoint", "alice-plugin").returncode == 0
        result = crctl_as("alice", "restart", "alice-plugin", "--map", "h1=h2",
                          "--plugin", "json:JSONDecoder")  # fmt: skip
        assert result.returncode == DENIED, result.stderr
        assert "plugin json:JSONDecoder is not one the admin installed on h2" in result.stderr
        assert "restart_plugins" in result.stderr  # the modules that may be named
        assert status_as("alice", "alice-plugin")["state"] == "stopped"
        # the checkpoint is intact: the same restart without that plugin goes through
        assert crctl_as("alice", "restart", "alice-plugin", "--map", "h1=h2").returncode == 0
    finally:
        crctl("kill", "alice-plugin", check=False)


def test_the_callers_environment_reaches_only_the_process_that_runs_as_them(
    testbed6: bed.State, users: dict[str, pwd.struct_passwd]
) -> None:
    """The environment is the caller's to choose, LD_PRELOAD included: the rank's root init
    (tini) never runs with it, only the command does, as its owner."""
    launched = crctl_as("alice", "launch", "--job", "alice-env", "--host", "h1",
                        "--env", "LD_PRELOAD=/nonexistent/evil.so", "--env", "CRCTL_MARK=yes",
                        "--", "/bin/sleep", "600")  # fmt: skip
    assert launched.returncode == 0, launched.stderr
    try:
        pid = status_as("alice", "alice-env")["ranks"][0]["pid"]
        init = int(Path(f"/proc/{pid}/status").read_text().split("PPid:")[1].split()[0])
        assert ps_user(pid) == "alice" and ps_user(init) == "root"
        assert Path(f"/proc/{init}/exe").resolve() == Path("/usr/bin/tini")

        def environ(of: int) -> dict[str, str]:
            raw = Path(f"/proc/{of}/environ").read_bytes().split(b"\0")
            return dict(item.decode().split("=", 1) for item in raw if b"=" in item)

        assert environ(pid)["LD_PRELOAD"] == "/nonexistent/evil.so"
        assert environ(pid)["CRCTL_MARK"] == "yes" and environ(pid)["USER"] == "alice"
        assert "LD_PRELOAD" not in environ(init) and "CRCTL_MARK" not in environ(init)
    finally:
        crctl("kill", "alice-env", check=False)
