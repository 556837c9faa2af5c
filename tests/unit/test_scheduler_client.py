"""examples/scheduler_client.py against a fake coordinator that keeps the API's contract (the
operations, their Any responses and metadata, errors as google.rpc.Status with ErrorInfo):
the real example runs as a process, as a scheduler would run it. The real coordinator's side
is tested by tests/e2e/test_scheduler_client.py."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from crctl.v1 import coordinator_pb2, coordinator_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "scheduler_client.py"


def crctl_error(code: int, message: str, reason: str, **metadata: str) -> status_pb2.Status:
    status = status_pb2.Status(code=code, message=message)
    info = error_details_pb2.ErrorInfo(reason=reason, domain="crctl", metadata=metadata)
    status.details.add().Pack(info)
    return status


@dataclass
class FakeCoordinator(
    coordinator_pb2_grpc.CoordinatorServicer,
    operations_pb2_grpc.OperationsServicer,
):
    """StartCheckpoint (refused once with UNAVAILABLE), StartRestart, WatchJob, and
    operations that are done at their second WaitOperation; the other methods UNIMPLEMENTED."""

    abort_checkpoint: bool = False
    refuse_restart: bool = False
    checkpoint_requests: list[coordinator_pb2.CheckpointRequest] = field(default_factory=list)
    restart_requests: list[coordinator_pb2.RestartRequest] = field(default_factory=list)
    waits: list[str] = field(default_factory=list)
    operations: dict[str, operations_pb2.Operation] = field(default_factory=dict)

    def StartCheckpoint(
        self, request: coordinator_pb2.CheckpointRequest, context: grpc.ServicerContext
    ) -> operations_pb2.Operation:
        self.checkpoint_requests.append(request)
        if len(self.checkpoint_requests) == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "coordinator starting")
        done = operations_pb2.Operation(name="operations/ckpt-1", done=True)
        if self.abort_checkpoint:
            error = crctl_error(
                code_pb2.ABORTED,
                "h2 voted no: CRIU failed",
                "CRIU_FAILED",
                job=request.job,
                host="h2",
            )
            done.error.CopyFrom(error)
        else:
            outcome = coordinator_pb2.CheckpointOutcome(
                checkpoint="ckpt-1", committed=True, duration_seconds=0.5, frozen_seconds=0.1
            )
            outcome.ranks.add(rank=0, host="h1", bytes=1000)
            outcome.ranks.add(rank=1, host="h2", bytes=24)
            done.response.Pack(outcome)
        self.operations[done.name] = done
        running = operations_pb2.Operation(name=done.name)
        running.metadata.Pack(coordinator_pb2.CheckpointMetadata(checkpoint="ckpt-1", phase="x"))
        return running

    def StartRestart(
        self, request: coordinator_pb2.RestartRequest, context: grpc.ServicerContext
    ) -> operations_pb2.Operation:
        self.restart_requests.append(request)
        if self.refuse_restart:
            message = "host h9 is not known to the coordinator"
            status = crctl_error(code_pb2.NOT_FOUND, message, "NOT_FOUND", host="h9")
            context.abort_with_status(rpc_status.to_status(status))
        outcome = coordinator_pb2.RestartOutcome(restore="rst-1", restarted=True)
        for rank, old in enumerate(("h1", "h2")):
            new = request.host_map.get(old, old)
            outcome.ranks.add(rank=rank, host=new, pid=100 + rank, state="running")
        done = operations_pb2.Operation(name="operations/rst-1", done=True)
        done.response.Pack(outcome)
        self.operations[done.name] = done
        return operations_pb2.Operation(name=done.name)

    def WatchJob(
        self, request: coordinator_pb2.WatchJobRequest, context: grpc.ServicerContext
    ) -> Iterator[coordinator_pb2.JobEvent]:
        yield coordinator_pb2.JobEvent(job=request.job, snapshot=coordinator_pb2.Job(state="x"))
        event = coordinator_pb2.JobEvent(job=request.job)
        event.checkpoint_phase.phase = "preparing"
        yield event
        while context.is_active():  # never ends by itself, as the real one
            time.sleep(0.05)

    def WaitOperation(
        self, request: operations_pb2.WaitOperationRequest, context: grpc.ServicerContext
    ) -> operations_pb2.Operation:
        self.waits.append(request.name)
        assert request.timeout.seconds > 0
        if self.waits.count(request.name) == 1:
            running = operations_pb2.Operation(name=request.name)  # its timeout passed
            metadata = coordinator_pb2.RestartMetadata(step="prepare")
            metadata.hosts.add(host="h4", state="prepare")
            running.metadata.Pack(metadata)
            return running
        return self.operations[request.name]


@pytest.fixture
def coordinator() -> Iterator[tuple[FakeCoordinator, str]]:
    fake = FakeCoordinator()  # type: ignore[abstract]  # only what the example calls
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(fake, server)
    operations_pb2_grpc.add_OperationsServicer_to_server(fake, server)  # type: ignore[no-untyped-call]
    with tempfile.TemporaryDirectory() as folder:
        address = f"unix:{folder}/api.sock"
        server.add_insecure_port(address)
        server.start()
        try:
            yield fake, address
        finally:
            server.stop(grace=None)


def run_example(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLE), "ring", "--address", address, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )


def test_it_checkpoints_then_restarts_on_the_new_hosts(
    coordinator: tuple[FakeCoordinator, str],
) -> None:
    fake, address = coordinator
    result = run_example(address, "--map", "h1=h4,h2=h5")

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    # refused with UNAVAILABLE, then asked again with the same request id
    first, second = fake.checkpoint_requests
    assert first.request_id and first.request_id == second.request_id
    assert fake.waits == ["operations/ckpt-1"] * 2 + ["operations/rst-1"] * 2
    (restart,) = fake.restart_requests
    assert dict(restart.host_map) == {"h1": "h4", "h2": "h5"}
    assert restart.checkpoint == "ckpt-1" and restart.request_id
    out = result.stdout
    assert "committed ckpt-1: 1024 bytes" in out
    assert "rank 0 on h4 (pid 100, running)" in out
    assert "rank 1 on h5 (pid 101, running)" in out
    assert 'ring checkpoint_phase: phase: "preparing"' in out
    assert "operations/rst-1: prepare, 1 hosts" in out


def test_an_aborted_checkpoint_ends_with_one_line_naming_its_reason(
    coordinator: tuple[FakeCoordinator, str],
) -> None:
    fake, address = coordinator
    fake.abort_checkpoint = True
    result = run_example(address, "--hosts", "h4,h5")

    assert result.returncode == 1
    assert result.stderr == (
        "scheduler_client: operations/ckpt-1: ABORTED: h2 voted no: CRIU failed "
        "[CRIU_FAILED host=h2 job=ring]\n"
    )
    assert fake.restart_requests == []


def test_a_refused_call_ends_with_one_line_from_its_status_details(
    coordinator: tuple[FakeCoordinator, str],
) -> None:
    fake, address = coordinator
    fake.refuse_restart = True
    result = run_example(address, "--map", "h1=h9")

    assert result.returncode == 1
    assert result.stderr == (
        "scheduler_client: restart of ring: NOT_FOUND: host h9 is not known to the coordinator "
        "[NOT_FOUND host=h9]\n"
    )


def test_a_tcp_address_without_certificates_is_refused() -> None:
    result = run_example("127.0.0.1:50051")
    assert result.returncode == 2
    assert "a TCP --address needs --tls-ca, --tls-cert and --tls-key" in result.stderr
