"""The scheduler API through a real gRPC server over the real services (fake CRIU hosts, real
time): long-running operations (start, get, list, wait, cancel at each phase, delete, after a
coordinator restart), request-id replays, ErrorInfo on errors, WatchJob, reflection and health.
Clients are plain grpcio stubs, as a scheduler's would be."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_status import rpc_status

from cli.exit_codes import ExitCode
from cli.main import main
from crctl.v1 import coordinator_pb2, coordinator_pb2_grpc
from tests.inproc.api_cluster import ApiCluster, api_test, unpack

JOB = "ring"
HOSTS = ["h1", "h2"]


def coordinator(channel: grpc.Channel) -> coordinator_pb2_grpc.CoordinatorStub:
    return coordinator_pb2_grpc.CoordinatorStub(channel)


def operations(channel: grpc.Channel) -> Any:
    return operations_pb2_grpc.OperationsStub(channel)


def error_info(exc: grpc.RpcError) -> tuple[grpc.StatusCode, error_details_pb2.ErrorInfo]:
    """The call's code and the ErrorInfo in its google.rpc.Status."""
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    assert status is not None, f"no google.rpc.Status in {exc!r}"
    infos = [unpack(d, error_details_pb2.ErrorInfo) for d in status.details[:1]]
    assert infos and infos[0].domain == "crctl", status
    return exc.code(), infos[0]  # type: ignore[attr-defined]


def failing(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def operation_error(operation: operations_pb2.Operation) -> tuple[int, error_details_pb2.ErrorInfo]:
    assert operation.done and operation.HasField("error"), operation
    return operation.error.code, unpack(operation.error.details[0], error_details_pb2.ErrorInfo)


def wait(channel: grpc.Channel, name: str, seconds: float = 30.0) -> operations_pb2.Operation:
    """WaitOperation until done, as a client with per-call deadlines does."""
    deadline = time.monotonic() + seconds
    while True:
        request = operations_pb2.WaitOperationRequest(
            name=name, timeout=duration_pb2.Duration(seconds=5)
        )
        operation: operations_pb2.Operation = operations(channel).WaitOperation(request, timeout=10)
        if operation.done or time.monotonic() > deadline:
            return operation


def start_checkpoint(channel: grpc.Channel, **fields: Any) -> operations_pb2.Operation:
    request = coordinator_pb2.CheckpointRequest(job=JOB, **fields)
    operation: operations_pb2.Operation = coordinator(channel).StartCheckpoint(request, timeout=10)
    return operation


async def launched(api: ApiCluster) -> None:
    await api.cluster.launch(JOB, HOSTS)


@api_test()
async def test_a_checkpoint_operation_is_started_waited_on_listed_and_deleted(
    api: ApiCluster,
) -> None:
    await launched(api)

    def scenario(channel: grpc.Channel) -> None:
        started = start_checkpoint(channel, leave_running=True)
        metadata = unpack(started.metadata, coordinator_pb2.CheckpointMetadata)
        assert started.name == f"operations/{metadata.checkpoint}" and not started.done
        assert metadata.job == JOB and metadata.requested_by == "root" and metadata.leave_running
        done = wait(channel, started.name)
        outcome = unpack(done.response, coordinator_pb2.CheckpointOutcome)
        assert outcome.committed and outcome.checkpoint == metadata.checkpoint
        assert [r.rank for r in outcome.ranks] == [0, 1]
        final = unpack(done.metadata, coordinator_pb2.CheckpointMetadata)
        assert final.phase == "committed"
        assert {(h.host, h.state) for h in final.hosts} == {
            ("h1", "committed"),
            ("h2", "committed"),
        }
        got = operations(channel).GetOperation(
            operations_pb2.GetOperationRequest(name=started.name)
        )
        assert got.done and got.response == done.response
        listed = operations(channel).ListOperations(
            operations_pb2.ListOperationsRequest(name="operations", filter=f"job={JOB} done=true")
        )
        assert [o.name for o in listed.operations] == [started.name]
        none = operations(channel).ListOperations(
            operations_pb2.ListOperationsRequest(filter="kind=restart")
        )
        assert list(none.operations) == []
        operations(channel).DeleteOperation(
            operations_pb2.DeleteOperationRequest(name=started.name)
        )
        code, info = error_info(
            failing(
                lambda: operations(channel).GetOperation(
                    operations_pb2.GetOperationRequest(name=started.name)
                )
            )
        )
        assert code == grpc.StatusCode.NOT_FOUND and info.reason == "NOT_FOUND"

    await api.call(scenario)
    assert sorted(api.cluster.running(JOB)) == [0, 1]


@api_test()
async def test_errors_carry_error_info_with_the_job_and_the_reason(api: ApiCluster) -> None:
    await launched(api)
    api.cluster.fake["h1"].delays["dump"] = 2.0

    def scenario(channel: grpc.Channel) -> None:
        code, info = error_info(
            failing(
                lambda: coordinator(channel).StartCheckpoint(
                    coordinator_pb2.CheckpointRequest(job="nosuch"), timeout=10
                )
            )
        )
        assert code == grpc.StatusCode.NOT_FOUND
        assert info.reason == "NOT_FOUND" and info.metadata["job"] == "nosuch"
        first = start_checkpoint(channel)
        code, info = error_info(failing(lambda: start_checkpoint(channel)))
        assert code == grpc.StatusCode.ABORTED and info.reason == "CONFLICT"
        assert info.metadata["job"] == JOB
        code, info = error_info(
            failing(
                lambda: operations(channel).ListOperations(
                    operations_pb2.ListOperationsRequest(filter="owner=bob")
                )
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and info.reason == "INVALID_ARGUMENT"
        code, info = error_info(
            failing(
                lambda: operations(channel).DeleteOperation(
                    operations_pb2.DeleteOperationRequest(name=first.name)
                )
            )
        )
        assert code == grpc.StatusCode.ABORTED, "a running operation is not deleted"
        assert wait(channel, first.name).HasField("response")

    await api.call(scenario)


def _cancel_in(api: ApiCluster, step: str, phase: str) -> Callable[[grpc.Channel], None]:
    """A checkpoint held in ``phase`` by a slow ``step`` on h1, cancelled there."""

    def scenario(channel: grpc.Channel) -> None:
        started = start_checkpoint(channel)
        deadline = time.monotonic() + 10
        while True:
            now = operations(channel).GetOperation(
                operations_pb2.GetOperationRequest(name=started.name)
            )
            if unpack(now.metadata, coordinator_pb2.CheckpointMetadata).phase == phase:
                break
            assert time.monotonic() < deadline, f"never reached {phase}: {now}"
            time.sleep(0.02)
        operations(channel).CancelOperation(
            operations_pb2.CancelOperationRequest(name=started.name)
        )
        done = wait(channel, started.name)
        code, info = operation_error(done)
        assert code == grpc.StatusCode.CANCELLED.value[0], done.error
        assert info.reason == "CANCELLED" and info.metadata["job"] == JOB
        assert info.metadata["phase"] == phase
        assert "cancelled: by root" in done.error.message
        outcome = unpack(done.error.details[1], coordinator_pb2.CheckpointOutcome)
        assert not outcome.committed
        assert unpack(done.metadata, coordinator_pb2.CheckpointMetadata).cancel_requested

    api.cluster.fake["h1"].delays[step] = 1.5
    return scenario


@api_test()
async def test_cancel_while_readying_aborts_and_the_job_runs_on(api: ApiCluster) -> None:
    await launched(api)
    await api.call(_cancel_in(api, "ready", "readying"))
    assert sorted(api.cluster.running(JOB)) == [0, 1]
    assert api.cluster.job(JOB).latest_checkpoint is None


@api_test()
async def test_cancel_while_preparing_aborts_and_thaws_every_rank(api: ApiCluster) -> None:
    await launched(api)
    await api.call(_cancel_in(api, "dump", "preparing"))
    await api.cluster.until(lambda: sorted(api.cluster.running(JOB)) == [0, 1], "ranks thawed")
    assert api.cluster.job(JOB).latest_checkpoint is None


@api_test()
async def test_cancel_once_committing_is_too_late_and_the_checkpoint_commits(
    api: ApiCluster,
) -> None:
    await launched(api)
    api.cluster.fake["h1"].delays["held"] = 0.0

    def scenario(channel: grpc.Channel) -> None:
        started = start_checkpoint(channel, leave_running=True)
        while unpack(
            operations(channel)
            .GetOperation(operations_pb2.GetOperationRequest(name=started.name))
            .metadata,
            coordinator_pb2.CheckpointMetadata,
        ).phase not in ("committing", "committed"):
            time.sleep(0.005)
        operations(channel).CancelOperation(
            operations_pb2.CancelOperationRequest(name=started.name)
        )
        done = wait(channel, started.name)
        assert unpack(done.response, coordinator_pb2.CheckpointOutcome).committed

    await api.call(scenario)
    assert api.cluster.job(JOB).latest_checkpoint is not None


@api_test()
async def test_wait_with_a_deadline_returns_the_running_operation(api: ApiCluster) -> None:
    await launched(api)
    api.cluster.fake["h2"].delays["dump"] = 3.0

    def scenario(channel: grpc.Channel) -> None:
        started = start_checkpoint(channel)
        began = time.monotonic()
        waited = operations(channel).WaitOperation(
            operations_pb2.WaitOperationRequest(
                name=started.name, timeout=duration_pb2.Duration(nanos=300_000_000)
            ),
            timeout=10,
        )
        took = time.monotonic() - began
        assert not waited.done and 0.25 < took < 2.0, took
        # the caller's own deadline bounds the wait too: answered, not DEADLINE_EXCEEDED
        waited = operations(channel).WaitOperation(
            operations_pb2.WaitOperationRequest(name=started.name), timeout=0.8
        )
        assert not waited.done
        assert wait(channel, started.name).HasField("response")

    await api.call(scenario)


@api_test()
async def test_operations_are_read_after_a_coordinator_restart(api: ApiCluster) -> None:
    await launched(api)

    def committed(channel: grpc.Channel) -> str:
        return wait(channel, start_checkpoint(channel, leave_running=True).name).name

    first = await api.call(committed)
    api.cluster.fake["h1"].delays["dump"] = 30.0
    running = await api.call(lambda channel: start_checkpoint(channel, leave_running=True).name)
    await api.restart_coordinator()

    def after(channel: grpc.Channel) -> None:
        kept = operations(channel).GetOperation(operations_pb2.GetOperationRequest(name=first))
        assert unpack(kept.response, coordinator_pb2.CheckpointOutcome).committed
        lost = wait(channel, running)
        code, info = operation_error(lost)
        assert code == grpc.StatusCode.ABORTED.value[0] and info.reason == "CHECKPOINT_ABORTED"
        assert "coordinator restarted before the decision" in lost.error.message
        listed = operations(channel).ListOperations(operations_pb2.ListOperationsRequest())
        assert [o.name for o in listed.operations] == [running, first]

    await api.call(after)


@api_test()
async def test_request_ids_replay_each_mutating_call(api: ApiCluster) -> None:
    def scenario(channel: grpc.Channel) -> None:
        stub = coordinator(channel)
        launch = coordinator_pb2.LaunchRequest(
            job=JOB, host="h1", rank=-1, argv=["app"], request_id="launch-1"
        )
        first, again = stub.Launch(launch, timeout=10), stub.Launch(launch, timeout=10)
        assert first == again and first.rank == 0
        stub.Launch(
            coordinator_pb2.LaunchRequest(job=JOB, host="h2", rank=-1, argv=["app"]), timeout=10
        )
        assert [r.rank for r in stub.GetJob(coordinator_pb2.GetJobRequest(job=JOB)).ranks] == [0, 1]
        code, info = error_info(
            failing(
                lambda: stub.Launch(
                    coordinator_pb2.LaunchRequest(
                        job=JOB, host="h2", rank=-1, argv=["other"], request_id="launch-1"
                    ),
                    timeout=10,
                )
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and info.metadata["job"] == JOB

        started = start_checkpoint(channel, request_id="ckpt-1")
        assert start_checkpoint(channel, request_id="ckpt-1").name == started.name
        done = wait(channel, started.name)
        replay = start_checkpoint(channel, request_id="ckpt-1")
        assert replay.name == started.name and replay.done and replay.response == done.response

        restart = coordinator_pb2.RestartRequest(
            job=JOB, host_map={"h1": "h3", "h2": "h3"}, request_id="rst-1"
        )
        moved = stub.StartRestart(restart, timeout=10)
        assert stub.StartRestart(restart, timeout=10).name == moved.name
        moved_done = wait(channel, moved.name)
        outcome = unpack(moved_done.response, coordinator_pb2.RestartOutcome)
        assert outcome.restarted and {r.host for r in outcome.ranks} == {"h3"}
        assert stub.StartRestart(restart, timeout=10).name == moved.name

        schedule = coordinator_pb2.SetScheduleRequest(
            job=JOB, every_seconds=3600, keep=2, request_id="sched-1"
        )
        first_schedule = stub.SetSchedule(schedule, timeout=10)
        stub.SetSchedule(
            coordinator_pb2.SetScheduleRequest(job=JOB, every_seconds=7200), timeout=10
        )
        assert stub.SetSchedule(schedule, timeout=10) == first_schedule, "replayed, not set again"
        now = stub.GetJob(coordinator_pb2.GetJobRequest(job=JOB)).schedule
        assert now.every_seconds == 7200

        kill = coordinator_pb2.KillJobRequest(job=JOB, request_id="kill-1")
        assert stub.KillJob(kill, timeout=10) == stub.KillJob(kill, timeout=10)

    await api.call(scenario)


@api_test()
async def test_the_same_request_id_on_two_jobs_starts_two_checkpoints(api: ApiCluster) -> None:
    await api.cluster.launch(JOB, HOSTS)
    await api.cluster.launch("other", ["h3"])

    def scenario(channel: grpc.Channel) -> None:
        key = uuid.uuid4().hex
        ours = start_checkpoint(channel, request_id=key)
        theirs = coordinator(channel).StartCheckpoint(
            coordinator_pb2.CheckpointRequest(job="other", request_id=key), timeout=10
        )
        assert ours.name != theirs.name
        jobs = {
            unpack(wait(channel, o.name).response, coordinator_pb2.CheckpointOutcome).ranks[0].host
            for o in (ours, theirs)
        }
        assert jobs == {"h1", "h3"}

    await api.call(scenario)


@api_test()
async def test_a_restart_operation_cancelled_while_preparing_leaves_the_checkpoint_restartable(
    api: ApiCluster,
) -> None:
    await launched(api)
    outcome = await api.cluster.checkpoint(JOB)
    assert outcome.committed
    api.cluster.fake["h3"].delays["prepare"] = 2.0

    def scenario(channel: grpc.Channel) -> None:
        stub = coordinator(channel)
        started = stub.StartRestart(
            coordinator_pb2.RestartRequest(job=JOB, host_map={"h1": "h3"}), timeout=10
        )
        while (
            unpack(
                operations(channel)
                .GetOperation(operations_pb2.GetOperationRequest(name=started.name))
                .metadata,
                coordinator_pb2.RestartMetadata,
            ).step
            != "prepare"
        ):
            time.sleep(0.02)
        operations(channel).CancelOperation(
            operations_pb2.CancelOperationRequest(name=started.name)
        )
        done = wait(channel, started.name)
        code, info = operation_error(done)
        assert code == grpc.StatusCode.CANCELLED.value[0] and info.reason == "CANCELLED"
        assert info.metadata["phase"] == "prepare"
        again = wait(
            channel,
            stub.StartRestart(
                coordinator_pb2.RestartRequest(job=JOB, host_map={"h1": "h2"}), timeout=10
            ).name,
        )
        assert unpack(again.response, coordinator_pb2.RestartOutcome).restarted

    await api.call(scenario)
    assert sorted(api.cluster.running(JOB)) == [0, 1]


@api_test()
async def test_watch_job_starts_with_the_job_then_follows_its_events(api: ApiCluster) -> None:
    await api.cluster.launch(JOB, ["h1"])

    def scenario(channel: grpc.Channel) -> None:
        stub = coordinator(channel)
        stream = stub.WatchJob(coordinator_pb2.WatchJobRequest(job=JOB), timeout=20)
        first = next(stream)
        assert first.WhichOneof("event") == "snapshot" and first.job == JOB
        assert [r.rank for r in first.snapshot.ranks] == [0]
        stub.Launch(coordinator_pb2.LaunchRequest(job=JOB, host="h2", rank=-1, argv=["app"]))
        started = start_checkpoint(channel)
        seen: list[str] = []
        for event in stream:
            kind = event.WhichOneof("event")
            if kind == "rank":
                seen.append(f"rank {event.rank.rank} {event.rank.state}")
            elif kind == "checkpoint_phase":
                assert event.operation == started.name
                seen.append(event.checkpoint_phase.phase)
            elif kind == "checkpoint_outcome":
                assert event.checkpoint_outcome.committed
                seen.append("outcome")
            if seen[-2:] == ["rank 0 checkpointed", "rank 1 checkpointed"]:
                break
        stream.cancel()
        assert seen == [
            "rank 1 running",
            "readying",
            "preparing",
            "committing",
            "committed",
            "outcome",
            "rank 0 checkpointed",
            "rank 1 checkpointed",
        ]
        code, info = error_info(
            failing(lambda: next(stub.WatchJob(coordinator_pb2.WatchJobRequest(job="nosuch"))))
        )
        assert code == grpc.StatusCode.NOT_FOUND and info.metadata["job"] == "nosuch"

    await api.call(scenario)


@api_test(hosts=1)
async def test_reflection_lists_the_services_and_health_answers_for_each(api: ApiCluster) -> None:
    def scenario(channel: grpc.Channel) -> None:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        expected = {
            "crctl.v1.Coordinator",
            "google.longrunning.Operations",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        }
        assert expected <= services, services
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", *expected):
            answer = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, name
        code = failing(
            lambda: health.Check(health_pb2.HealthCheckRequest(service="nosuch"), timeout=5)
        ).code()  # type: ignore[attr-defined]
        assert code == grpc.StatusCode.NOT_FOUND

    await api.call(scenario)


@api_test()
async def test_the_cli_reattaches_to_its_checkpoint_across_a_coordinator_restart(
    api: ApiCluster,
) -> None:
    """`crctl checkpoint` loses its stream when the coordinator dies mid-checkpoint, waits on
    the checkpoint's operation until a new coordinator answers, and reports the outcome that
    one recorded (undecided, hence aborted) with the aborted exit code."""
    await launched(api)
    api.cluster.fake["h1"].delays["dump"] = 30.0
    said = io.StringIO()

    def cli() -> int:
        with contextlib.redirect_stderr(said):
            return main(["checkpoint", JOB, "--api-address", api.address])

    running = asyncio.create_task(asyncio.to_thread(cli))
    store = api.cluster.service.operations._store
    await api.cluster.until(lambda: store.operations(done=False), "the checkpoint started")
    await asyncio.sleep(0.3)  # the CLI has had its first progress events
    await api.restart_coordinator()
    code = await asyncio.wait_for(running, 60)
    assert code == ExitCode.ABORTED, said.getvalue()
    text = said.getvalue()
    assert "reattaching to operations/ckpt-" in text
    assert "coordinator restarted before the decision" in text


@api_test(hosts=1)
async def test_every_job_rpc_answers_an_unknown_job_with_not_found_and_its_error_info(
    api: ApiCluster,
) -> None:
    def scenario(channel: grpc.Channel) -> None:
        stub = coordinator(channel)
        calls: dict[str, Callable[[], object]] = {
            "GetJob": lambda: stub.GetJob(coordinator_pb2.GetJobRequest(job="nosuch")),
            "KillJob": lambda: stub.KillJob(coordinator_pb2.KillJobRequest(job="nosuch")),
            "Checkpoint": lambda: next(
                stub.Checkpoint(coordinator_pb2.CheckpointRequest(job="nosuch"))
            ),
            "StartCheckpoint": lambda: stub.StartCheckpoint(
                coordinator_pb2.CheckpointRequest(job="nosuch")
            ),
            "Restart": lambda: next(stub.Restart(coordinator_pb2.RestartRequest(job="nosuch"))),
            "StartRestart": lambda: stub.StartRestart(coordinator_pb2.RestartRequest(job="nosuch")),
            "ListCheckpoints": lambda: stub.ListCheckpoints(
                coordinator_pb2.ListCheckpointsRequest(job="nosuch")
            ),
            "VerifyCheckpoint": lambda: stub.VerifyCheckpoint(
                coordinator_pb2.VerifyCheckpointRequest(job="nosuch")
            ),
            "WatchJob": lambda: next(stub.WatchJob(coordinator_pb2.WatchJobRequest(job="nosuch"))),
            "SetSchedule": lambda: stub.SetSchedule(
                coordinator_pb2.SetScheduleRequest(job="nosuch", every_seconds=60)
            ),
            "PinCheckpoint": lambda: stub.PinCheckpoint(
                coordinator_pb2.PinCheckpointRequest(job="nosuch", checkpoint="ckpt-1")
            ),
        }
        for method, call in calls.items():
            code, info = error_info(failing(call))
            assert (code, info.reason, info.metadata["job"]) == (
                grpc.StatusCode.NOT_FOUND,
                "NOT_FOUND",
                "nosuch",
            ), method
        ops = operations(channel)
        for name in ("operations/ckpt-nosuch", "operations/rst-nosuch"):
            for method, request in (
                (ops.GetOperation, operations_pb2.GetOperationRequest(name=name)),
                (ops.WaitOperation, operations_pb2.WaitOperationRequest(name=name)),
                (ops.CancelOperation, operations_pb2.CancelOperationRequest(name=name)),
                (ops.DeleteOperation, operations_pb2.DeleteOperationRequest(name=name)),
            ):
                code, info = error_info(failing(functools.partial(method, request)))
                assert (code, info.reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND"), name
        code, info = error_info(
            failing(
                lambda: operations(channel).GetOperation(
                    operations_pb2.GetOperationRequest(name="ckpt-1")
                )
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT

    await api.call(scenario)
