"""The gRPC API: a thin translator between protobuf and the coordinator's domain calls. Each
request is checked first (coordinator.requests); domain errors, and refused requests, become gRPC
status codes through crctl.status, in one place (``_domain_errors``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import grpc.aio
from google.protobuf.json_format import Parse
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from coordinator import requests
from coordinator.access import AccessPolicy, audit
from coordinator.callers import Callers
from coordinator.checkpoints import CheckpointRun
from coordinator.front_door import FrontDoor
from coordinator.registry import ALIVE, LOST
from coordinator.schedules import schedule_to_proto
from coordinator.service import CoordinatorService
from coordinator.store import AgentRecord, CheckpointRecord, JobRecord
from coordinator.verification import Verification
from crctl.errors import ConfigError, CrctlError, PermissionDeniedError, UnavailableError
from crctl.identity import Identity
from crctl.status import ERROR_METADATA, status_for
from crctl.v1 import coordinator_pb2, coordinator_pb2_grpc

SERVICE_NAME = "crctl.v1.Coordinator"
Context = grpc.aio.ServicerContext[Any, Any]
_STATES = {ALIVE: coordinator_pb2.AGENT_STATE_ALIVE, LOST: coordinator_pb2.AGENT_STATE_LOST}


@asynccontextmanager
async def _domain_errors(context: Context) -> AsyncIterator[None]:
    """A crctl error raised inside ends the RPC with its mapped status code and message."""
    try:
        yield
    except CrctlError as exc:
        # Marks the status as the coordinator's own answer, not a transport failure.
        context.set_trailing_metadata(((ERROR_METADATA, type(exc).__name__),))
        await context.abort(status_for(exc), str(exc))


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def agent_to_proto(record: AgentRecord) -> coordinator_pb2.Agent:
    return coordinator_pb2.Agent(
        host=record.host,
        addresses=list(record.addresses),
        state=_STATES.get(record.state, coordinator_pb2.AGENT_STATE_UNSPECIFIED),
        last_heartbeat=_timestamp(record.last_heartbeat),
        registered_at=_timestamp(record.registered_at),
        criu_version=record.criu_version,
        capabilities=list(record.capabilities),
        pid=record.pid,
    )


def job_to_proto(record: JobRecord) -> coordinator_pb2.Job:
    job = coordinator_pb2.Job(
        job=record.job,
        state=record.state,
        latest_checkpoint=record.latest_checkpoint or "",
        created_at=_timestamp(record.created_at),
        owner_uid=record.owner_uid,
        owner=record.owner,
    )
    if record.schedule is not None:
        job.schedule.CopyFrom(schedule_to_proto(record.schedule))
    for rank in record.ranks:
        proto = job.ranks.add(
            rank=rank.rank, host=rank.host, pid=rank.pid, state=rank.state, argv=list(rank.argv)
        )
        if rank.exit_status is not None:
            proto.exit_status = rank.exit_status
    return job


def checkpoint_to_proto(
    record: CheckpointRecord, latest: str | None
) -> coordinator_pb2.CheckpointInfo:
    info = coordinator_pb2.CheckpointInfo(
        checkpoint=record.checkpoint,
        job=record.job,
        state=record.state,
        latest=record.checkpoint == latest,
        started_at=_timestamp(record.started_at),
        reason=record.reason,
        directory=record.directory,
        pinned=record.pinned,
    )
    if record.finished_at is not None:
        info.finished_at.CopyFrom(_timestamp(record.finished_at))
    if record.manifest:
        Parse(record.manifest, info.manifest)
    return info


def outcome_from_record(record: CheckpointRecord) -> coordinator_pb2.CheckpointEvent:
    """The outcome of a finished checkpoint, for a retry with its request id."""
    event = coordinator_pb2.CheckpointEvent()
    outcome = event.outcome
    outcome.checkpoint = record.checkpoint
    outcome.committed = record.state == "committed"
    outcome.reason = record.reason or (
        "" if record.state != "preparing" else "still preparing on a previous coordinator"
    )
    outcome.failed_host = record.failed_host
    if record.finished_at is not None:
        outcome.duration_seconds = record.finished_at - record.started_at
    if record.manifest:
        manifest = Parse(record.manifest, coordinator_pb2.Manifest())
        outcome.ranks.extend(manifest.ranks)
    return event


_PROBLEM_KINDS = {
    "missing": coordinator_pb2.FILE_PROBLEM_KIND_MISSING,
    "size": coordinator_pb2.FILE_PROBLEM_KIND_SIZE,
    "digest": coordinator_pb2.FILE_PROBLEM_KIND_DIGEST,
}


def verification_to_proto(result: Verification) -> coordinator_pb2.VerifyCheckpointResponse:
    return coordinator_pb2.VerifyCheckpointResponse(
        job=result.job,
        checkpoint=result.checkpoint,
        directory=str(result.directory),
        ok=result.ok,
        files=result.files,
        bytes=result.bytes,
        problems=[
            coordinator_pb2.FileProblem(
                path=p.path,
                kind=_PROBLEM_KINDS.get(p.kind, coordinator_pb2.FILE_PROBLEM_KIND_UNSPECIFIED),
                detail=p.detail,
            )
            for p in result.problems
        ],
        duration_seconds=result.seconds,
    )


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    """Every call is first identified (``Callers``: UNAUTHENTICATED otherwise), then authorized
    against the job's owner (``AccessPolicy``); mutating calls are audited."""

    def __init__(self, service: CoordinatorService, callers: Callers, policy: AccessPolicy) -> None:
        self._service = service
        self._callers = callers
        self._policy = policy

    def _job(self, caller: Identity, job: str, action: str, *, mutating: bool) -> JobRecord:
        """The job, if the caller may ``action`` it (refusals of mutating calls audited)."""
        requests.check_job(job)
        record = self._service.jobs.get(job)
        try:
            self._policy.require(caller, record, action)
        except PermissionDeniedError as exc:
            if mutating:
                audit(caller, action, job, allowed=False, reason=exc.message)
            raise
        if mutating:
            audit(caller, action, job, allowed=True)
        return record

    async def ListAgents(
        self, request: coordinator_pb2.ListAgentsRequest, context: Context
    ) -> coordinator_pb2.ListAgentsResponse:
        async with _domain_errors(context):
            self._callers.identify(context)
        return coordinator_pb2.ListAgentsResponse(
            agents=[agent_to_proto(a) for a in self._service.agents()]
        )

    async def Launch(
        self, request: coordinator_pb2.LaunchRequest, context: Context
    ) -> coordinator_pb2.LaunchResponse:
        async with _domain_errors(context):
            caller = self._callers.identify(context)
            requests.check_launch(request)
            existing = self._service.jobs.find(request.job)
            if existing is not None:
                self._job(caller, request.job, "launch a rank in", mutating=True)
            else:
                audit(caller, "launch", request.job, allowed=True)
            rank = await self._service.jobs.launch(
                request.job,
                request.host,
                request.rank,
                list(request.argv),
                dict(request.env),
                owner=caller,
                cwd=request.cwd,
                umask=request.umask if request.HasField("umask") else 0o022,
            )
        return coordinator_pb2.LaunchResponse(
            job=rank.job, rank=rank.rank, host=rank.host, pid=rank.pid
        )

    async def ListJobs(
        self, request: coordinator_pb2.ListJobsRequest, context: Context
    ) -> coordinator_pb2.ListJobsResponse:
        async with _domain_errors(context):
            caller = self._callers.identify(context)
        return coordinator_pb2.ListJobsResponse(
            jobs=[
                job_to_proto(j)
                for j in self._service.jobs.jobs()
                if self._policy.may_see(caller, j)
            ]
        )

    async def GetJob(
        self, request: coordinator_pb2.GetJobRequest, context: Context
    ) -> coordinator_pb2.Job:
        async with _domain_errors(context):
            caller = self._callers.identify(context)
            job = self._job(caller, request.job, "see", mutating=False)
        proto = job_to_proto(job)
        for checkpoint, host, decision in self._service.awaiting_decision(job.job):
            proto.awaiting_decision.add(checkpoint=checkpoint, host=host, decision=decision)
        return proto

    async def KillJob(
        self, request: coordinator_pb2.KillJobRequest, context: Context
    ) -> coordinator_pb2.KillJobResponse:
        async with _domain_errors(context):
            caller = self._callers.identify(context)
            self._job(caller, request.job, "kill", mutating=True)
            record = await self._service.jobs.kill(request.job)
        return coordinator_pb2.KillJobResponse(job=job_to_proto(record))

    async def Checkpoint(
        self, request: coordinator_pb2.CheckpointRequest, context: Context
    ) -> AsyncIterator[coordinator_pb2.CheckpointEvent]:
        async with _domain_errors(context):
            caller = self._callers.identify(context)
            requests.check_checkpoint(request)
            self._job(caller, request.job, "checkpoint", mutating=True)
            started = self._service.checkpoints.start(
                request.job,
                leave_running=request.leave_running,
                timeout=request.timeout_seconds,
                request_id=request.request_id,
                external=request.external or "refuse",
            )
        if isinstance(started, CheckpointRun):
            async for event in started.follow():
                yield event
        else:
            yield outcome_from_record(started)

    async def Restart(
        self, request: coordinator_pb2.RestartRequest, context: Context
    ) -> AsyncIterator[coordinator_pb2.RestartEvent]:
        async with _domain_errors(context):
            caller = self._callers.identify(context)
            requests.check_restart(request)
            self._job(caller, request.job, "restart", mutating=True)
            run = self._service.restarts.start(request)
        async for event in run.follow():
            yield event

    async def ListCheckpoints(
        self, request: coordinator_pb2.ListCheckpointsRequest, context: Context
    ) -> coordinator_pb2.ListCheckpointsResponse:
        async with _domain_errors(context):
            caller = self._callers.identify(context)
            job = self._job(caller, request.job, "see the checkpoints of", mutating=False)
            records = self._service.checkpoints.list(request.job)
        return coordinator_pb2.ListCheckpointsResponse(
            checkpoints=[checkpoint_to_proto(r, job.latest_checkpoint) for r in records]
        )

    async def VerifyCheckpoint(
        self, request: coordinator_pb2.VerifyCheckpointRequest, context: Context
    ) -> coordinator_pb2.VerifyCheckpointResponse:
        async with _domain_errors(context):
            caller = self._callers.identify(context)
            self._job(caller, request.job, "verify", mutating=True)
            result = await self._service.checkpoints.verify(request.job, request.checkpoint)
        return verification_to_proto(result)

    async def SetSchedule(
        self, request: coordinator_pb2.SetScheduleRequest, context: Context
    ) -> coordinator_pb2.Schedule:
        async with _domain_errors(context):
            caller = self._callers.identify(context)
            requests.check_schedule(request)
            self._job(caller, request.job, "schedule checkpoints of", mutating=True)
            record = self._service.schedules.set(
                request.job,
                every_seconds=request.every_seconds,
                keep=request.keep,
                stop=request.stop,
            )
        return schedule_to_proto(record)

    async def PinCheckpoint(
        self, request: coordinator_pb2.PinCheckpointRequest, context: Context
    ) -> coordinator_pb2.CheckpointInfo:
        async with _domain_errors(context):
            caller = self._callers.identify(context)
            requests.check_pin(request)
            job = self._job(caller, request.job, "pin checkpoints of", mutating=True)
            record = self._service.checkpoints.pin(request.job, request.checkpoint, request.pinned)
        return checkpoint_to_proto(record, job.latest_checkpoint)


async def create_server(
    service: CoordinatorService,
    *,
    front_door: FrontDoor | None,
    policy: AccessPolicy,
    tcp_address: str = "",
    tls: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Build the gRPC server (API + standard health service): on the front door's private
    socket, and on ``tcp_address`` only with ``tls`` (mutual TLS: client certificates
    required). Returns the server (not started) and the bound TCP port (0 without TCP)."""
    if tcp_address and tls is None:
        raise ConfigError(
            f"api_tcp_address {tcp_address} needs TLS with client certificates: make them "
            "with `crctl keys api-init` (an unauthenticated TCP API is not offered)"
        )
    server = grpc.aio.server()
    servicer = CoordinatorServicer(service, Callers(front_door), policy)
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if front_door is not None:
        front_door.prepare()
        if server.add_insecure_port(front_door.grpc_address) == 0:
            raise UnavailableError(f"cannot serve the gRPC API on {front_door.grpc_address}")
    port = 0
    if tcp_address:
        assert tls is not None
        port = server.add_secure_port(tcp_address, tls)
        if port == 0:
            raise UnavailableError(f"cannot serve the gRPC API on {tcp_address}: address in use?")
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port
