"""Who calls the API, for real: the kernel's credentials of a caller on the Unix socket (a
client process run as another user), mutual TLS on TCP, and nothing else. Every method of the
Coordinator service refuses a caller it cannot name; the health service answers anyone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from structlog.testing import capture_logs

from coordinator.access import AccessPolicy
from coordinator.store import JobRecord
from crctl import tls
from crctl.errors import NotFoundError, PermissionDeniedError
from crctl.identity import Identity
from crctl.v1 import coordinator_pb2 as pb
from crctl.v1 import coordinator_pb2_grpc as rpc
from tests.unit.api_harness import Served, serve_api

NOBODY = 65534


class Domain:
    """Records who reached the domain; every job belongs to uid 4242."""

    def __init__(self) -> None:
        self.launched: list[Identity] = []
        self.jobs = SimpleNamespace(
            launch=self._launch,
            get=self._get,
            find=lambda job: None,
            jobs=list,
            kill=self._launch_free,
        )
        self.checkpoints = SimpleNamespace(start=self._refuse, list=self._refuse)
        self.restarts = SimpleNamespace(start=self._refuse)
        self.agents = list

    async def _launch(self, job: str, host: str, rank: int, *args: Any, **kw: Any) -> Any:
        self.launched.append(kw["owner"])
        raise NotFoundError("reached the domain")

    async def _launch_free(self, job: str) -> Any:
        raise NotFoundError("reached the domain")

    def _get(self, job: str) -> JobRecord:
        return JobRecord(job, "running", 0.0, None, (), owner_uid=4242, owner="dave")

    def _refuse(self, *args: Any, **kw: Any) -> Any:
        raise NotFoundError("reached the domain")


LAUNCH = """
import sys, grpc
from crctl.v1 import coordinator_pb2 as pb, coordinator_pb2_grpc as rpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    try:
        rpc.CoordinatorStub(channel).Launch(
            pb.LaunchRequest(job="j", host="h1", rank=-1, argv=["id"]), timeout=10)
    except grpc.RpcError as exc:
        print(exc.code().name)
"""


def as_nobody(*argv: str) -> str:
    """Run ``argv`` as user nobody (no groups, no capabilities); its stdout."""
    result = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_caller_on_the_unix_socket_is_the_user_the_kernel_says() -> None:
    domain = Domain()

    def call(served: Served) -> tuple[str, str]:
        as_other = as_nobody(sys.executable, "-c", LAUNCH, served.unix)
        with grpc.insecure_channel(served.unix) as channel:
            stub = rpc.CoordinatorStub(channel)
            with pytest.raises(grpc.RpcError) as ours:
                stub.Launch(pb.LaunchRequest(job="j", host="h1", rank=-1, argv=["id"]), timeout=10)
        return as_other, ours.value.code().name

    as_other, ours = serve_api(domain, call)
    assert (as_other, ours) == ("NOT_FOUND", "NOT_FOUND")  # both reached the domain
    assert [(i.uid, i.gid, i.name) for i in domain.launched] == [
        (NOBODY, 65534, "nobody"),
        (os.getuid(), os.getgid(), "root"),
    ]


def test_another_users_job_is_refused_to_a_plain_user_and_allowed_to_an_admin() -> None:
    domain = Domain()
    kill = """
import sys, grpc
from crctl.v1 import coordinator_pb2 as pb, coordinator_pb2_grpc as rpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    try:
        rpc.CoordinatorStub(channel).KillJob(pb.KillJobRequest(job="j"), timeout=10)
    except grpc.RpcError as exc:
        print(exc.code().name, exc.details())
"""
    refused = serve_api(domain, lambda s: as_nobody(sys.executable, "-c", kill, s.unix))
    assert refused.startswith("PERMISSION_DENIED permission denied: nobody (uid 65534)")
    assert "belongs to dave (uid 4242)" in refused
    admins = AccessPolicy(admin_gids=frozenset({65534}))
    allowed = serve_api(
        domain, lambda s: as_nobody(sys.executable, "-c", kill, s.unix), policy=admins
    )
    assert allowed == "NOT_FOUND reached the domain"


def test_every_method_refuses_a_caller_it_cannot_name() -> None:
    """gRPC's own socket, reached without the front door (root can), names nobody: each method
    of the Coordinator and the Operations services answers UNAUTHENTICATED, and none reaches
    the domain."""
    domain = Domain()
    services = [
        pb.DESCRIPTOR.services_by_name["Coordinator"],
        operations_pb2.DESCRIPTOR.services_by_name["Operations"],
    ]
    methods = {f"{s.name}/{m.name}": m for s in services for m in s.methods}

    def call(served: Served) -> dict[str, str]:
        codes = {}
        with grpc.insecure_channel(served.private) as channel:
            for name, method in methods.items():
                path = f"/{method.containing_service.full_name}/{method.name}"
                request = method.input_type._concrete_class()
                if method.server_streaming:
                    stream = channel.unary_stream(
                        path, request_serializer=type(request).SerializeToString
                    )
                    try:
                        list(stream(request, timeout=10))
                    except grpc.RpcError as exc:
                        codes[name] = exc.code().name
                else:
                    unary = channel.unary_unary(
                        path, request_serializer=type(request).SerializeToString
                    )
                    try:
                        unary(request, timeout=10)
                    except grpc.RpcError as exc:
                        codes[name] = exc.code().name
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            codes["health"] = health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)
        return codes

    codes = serve_api(domain, call)
    assert set(codes) == set(methods) | {"health"}
    assert {name: code for name, code in codes.items() if name != "health"} == dict.fromkeys(
        methods, "UNAUTHENTICATED"
    )
    assert codes["health"] == "SERVING"
    assert domain.launched == []


def test_the_health_service_answers_any_user_on_the_unix_socket() -> None:
    check = """
import sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from structlog.testing import capture_logs
with grpc.insecure_channel(sys.argv[1]) as channel:
    stub = health_pb2_grpc.HealthStub(channel)
    print(stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status)
"""
    status = serve_api(Domain(), lambda s: as_nobody(sys.executable, "-c", check, s.unix))
    assert status == str(health_pb2.HealthCheckResponse.SERVING)


def test_the_front_doors_files_let_everyone_call_and_only_root_reach_grpc() -> None:
    def modes(served: Served) -> tuple[int, int, int]:
        public = Path(served.unix.removeprefix("unix:"))
        private = Path(served.private.removeprefix("unix:")).parent
        return public.stat().st_mode & 0o777, private.stat().st_mode & 0o777, private.stat().st_uid

    assert serve_api(Domain(), modes) == (0o666, 0o700, 0)


@pytest.fixture
def api_tls(tmp_path: Path) -> Path:
    directory = tmp_path / "api"
    tls.init_api(directory)
    for name in ("nobody", "no-such-user-here"):
        tls.issue_client(directory, name)
    return directory


def _launch_over_tcp(target: str, credentials: grpc.ChannelCredentials | None) -> str:
    channel = (
        grpc.insecure_channel(target)
        if credentials is None
        else grpc.secure_channel(target, credentials)
    )
    with channel:
        try:
            rpc.CoordinatorStub(channel).Launch(
                pb.LaunchRequest(job="j", host="h1", rank=-1, argv=["id"]), timeout=10
            )
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
    raise AssertionError("the launch succeeded")


def test_tcp_takes_only_a_client_certificate_of_a_local_user(api_tls: Path) -> None:
    domain = Domain()
    clients = api_tls / "clients"

    def cert(name: str) -> grpc.ChannelCredentials:
        return tls.channel_credentials(
            api_tls / "ca.pem", clients / f"{name}.pem", clients / f"{name}.key"
        )

    def call(served: Served) -> dict[str, str]:
        no_cert = grpc.ssl_channel_credentials(root_certificates=(api_tls / "ca.pem").read_bytes())
        return {
            "plain": _launch_over_tcp(served.tcp, None),
            "tls without a certificate": _launch_over_tcp(served.tcp, no_cert),
            "unknown user": _launch_over_tcp(served.tcp, cert("no-such-user-here")),
            "nobody": _launch_over_tcp(served.tcp, cert("nobody")),
        }

    answers = serve_api(domain, call, tls_dir=api_tls)
    assert answers["plain"].startswith("UNAVAILABLE")
    assert answers["tls without a certificate"].startswith("UNAVAILABLE")
    assert answers["unknown user"].startswith("UNAUTHENTICATED")
    assert "no-such-user-here" in answers["unknown user"]
    assert answers["nobody"] == "NOT_FOUND: reached the domain"
    assert [i.uid for i in domain.launched] == [NOBODY]


def test_a_tcp_listener_without_tls_is_refused_at_start() -> None:
    import asyncio

    from coordinator.api import create_server
    from crctl.errors import ConfigError

    async def build() -> None:
        await create_server(Domain(), front_door=None, policy=AccessPolicy(), tcp_address="0:1")  # type: ignore[arg-type]

    with pytest.raises(ConfigError, match="needs TLS with client certificates"):
        asyncio.run(build())


def test_the_policy_names_the_owner_and_counts_admin_groups() -> None:
    job = JobRecord("j", "running", 0.0, None, (), owner_uid=1001, owner="alice")
    bob = Identity(uid=1002, gid=1002, groups=(27,), name="bob")
    with pytest.raises(
        PermissionDeniedError, match=r"bob \(uid 1002\) may not kill job j: it belongs to alice"
    ):
        AccessPolicy().require(bob, job, "kill")
    AccessPolicy(admin_gids=frozenset({27})).require(bob, job, "kill")
    AccessPolicy(admin_uids=frozenset({1002})).require(bob, job, "kill")
    AccessPolicy().require(Identity(uid=1001, gid=1001, groups=(), name="alice"), job, "kill")
    assert AccessPolicy().is_admin(Identity(uid=0, gid=0, groups=(), name="root"))


def test_mutating_calls_are_audited_with_the_callers_identity_allowed_or_not() -> None:
    kill = """
import sys, grpc
from crctl.v1 import coordinator_pb2 as pb, coordinator_pb2_grpc as rpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    try:
        rpc.CoordinatorStub(channel).KillJob(pb.KillJobRequest(job="j"), timeout=10)
    except grpc.RpcError as exc:
        print(exc.code().name)
"""

    def call(served: Served) -> str:
        refused = as_nobody(sys.executable, "-c", kill, served.unix)
        with grpc.insecure_channel(served.unix) as channel, pytest.raises(grpc.RpcError):
            rpc.CoordinatorStub(channel).KillJob(pb.KillJobRequest(job="j"), timeout=10)
        return refused

    with capture_logs() as logs:
        assert serve_api(Domain(), call) == "PERMISSION_DENIED"
    audits = [
        (e["caller"], e["uid"], e["action"], e["job"], e["allowed"])
        for e in logs
        if e["event"] == "audit"
    ]
    assert audits == [("nobody", NOBODY, "kill", "j", False), ("root", 0, "kill", "j", True)]
