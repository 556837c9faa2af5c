"""The gRPC API: a thin translator between protobuf and the coordinator's domain calls. Each
request is checked first (coordinator.requests); domain errors, and refused requests, become gRPC
statuses through crctl.status, in one place (``coordinator.api_errors.domain_errors``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf.json_format import Parse
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from coordinator import image_copies, requests
from coordinator.access import AccessPolicy, audit, authorized
from coordinator.api_errors import domain_errors
from coordinator.callers import Callers
from coordinator.checkpoints import CheckpointRun
from coordinator.front_door import FrontDoor
from coordinator.operations_api import OperationsServicer
from coordinator.registry import ALIVE, LOST
from coordinator.restarts import RestartRun
from coordinator.schedules import schedule_to_proto
from coordinator.service import CoordinatorService
from coordinator.store import AgentRecord, CheckpointRecord, JobRecord
from coordinator.verification import Verification
from crctl.errors import ConfigError, UnavailableError
from crctl.identity import Identity
from crctl.lro import outcome_of
from crctl.v1 import coordinator_pb2, coordinator_pb2_grpc

SERVICE_NAME = "crctl.v1.Coordinator"
OPERATIONS_SERVICE = "google.longrunning.Operations"
HEALTH_SERVICE = "grpc.health.v1.Health"
# Every service the server offers: listed by reflection, each with its health status.
SERVED = (SERVICE_NAME, OPERATIONS_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME)
_REPLY_TYPES: dict[str, type[Any]] = {
    "Launch": coordinator_pb2.LaunchResponse,
    "KillJob": coordinator_pb2.KillJobResponse,
    "StartCheckpoint": operations_pb2.Operation,
    "StartRestart": operations_pb2.Operation,
    "SetSchedule": coordinator_pb2.Schedule,
}
Reply = TypeVar("Reply", bound=Message)
Context = grpc.aio.ServicerContext[Any, Any]
_STATES = {ALIVE: coordinator_pb2.AGENT_STATE_ALIVE, LOST: coordinator_pb2.AGENT_STATE_LOST}


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
    record: CheckpointRecord, latest: str | None, agents: Mapping[str, AgentRecord]
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
        if record.state == "committed":
            info.unreachable = image_copies.unreachable_ranks(info.manifest, {}, agents)
    return info


_PROBLEM_KINDS = {
    "missing": coordinator_pb2.FILE_PROBLEM_KIND_MISSING,
    "size": coordinator_pb2.FILE_PROBLEM_KIND_SIZE,
    "digest": coordinator_pb2.FILE_PROBLEM_KIND_DIGEST,
    "unreachable": coordinator_pb2.FILE_PROBLEM_KIND_UNREACHABLE,
    "copy": coordinator_pb2.FILE_PROBLEM_KIND_COPY,
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
        return authorized(self._policy, caller, record, action, mutating=mutating)

    async def ListAgents(
        self, request: coordinator_pb2.ListAgentsRequest, context: Context
    ) -> coordinator_pb2.ListAgentsResponse:
        async with domain_errors(context):
            self._callers.identify(context)
        return coordinator_pb2.ListAgentsResponse(
            agents=[agent_to_proto(a) for a in self._service.agents()]
        )

    async def Launch(
        self, request: coordinator_pb2.LaunchRequest, context: Context
    ) -> coordinator_pb2.LaunchResponse:
        async with domain_errors(context):
            caller = self._callers.identify(context)
            requests.check_launch(request)
            existing = self._service.jobs.find(request.job)
            if existing is not None:
                self._job(caller, request.job, "launch a rank in", mutating=True)
            else:
                audit(caller, "launch", request.job, allowed=True)

            async def launch() -> coordinator_pb2.LaunchResponse:
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

            reply, _ = await self._once(caller, "Launch", request, launch)
        return reply

    async def _once(
        self,
        caller: Identity,
        method: str,
        request: Any,
        call: Callable[[], Awaitable[Reply]],
    ) -> tuple[Reply, bool]:
        """``call()`` at most once per request id (scoped to the caller and the job)."""
        if not request.request_id:
            return await call(), False
        reply_type: type[Reply] = _REPLY_TYPES[method]
        return await self._service.ledger.once(
            caller_uid=caller.uid,
            job=request.job,
            request_id=request.request_id,
            method=method,
            request=request,
            reply_type=reply_type,
            call=call,
        )

    async def ListJobs(
        self, request: coordinator_pb2.ListJobsRequest, context: Context
    ) -> coordinator_pb2.ListJobsResponse:
        async with domain_errors(context):
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
        async with domain_errors(context):
            caller = self._callers.identify(context)
            self._job(caller, request.job, "see", mutating=False)
            return self._job_proto(request.job)

    def _job_proto(self, job: str) -> coordinator_pb2.Job:
        proto = job_to_proto(self._service.jobs.get(job))
        for checkpoint, host, decision in self._service.awaiting_decision(job):
            proto.awaiting_decision.add(checkpoint=checkpoint, host=host, decision=decision)
        return proto

    async def KillJob(
        self, request: coordinator_pb2.KillJobRequest, context: Context
    ) -> coordinator_pb2.KillJobResponse:
        async with domain_errors(context):
            caller = self._callers.identify(context)
            self._job(caller, request.job, "kill", mutating=True)

            async def kill() -> coordinator_pb2.KillJobResponse:
                record = await self._service.jobs.kill(request.job)
                return coordinator_pb2.KillJobResponse(job=job_to_proto(record))

            reply, _ = await self._once(caller, "KillJob", request, kill)
        return reply

    async def _start(
        self,
        caller: Identity,
        method: str,
        request: coordinator_pb2.CheckpointRequest | coordinator_pb2.RestartRequest,
        action: str,
        start: Callable[[], operations_pb2.Operation],
    ) -> operations_pb2.Operation:
        """The operation ``start()`` begins, or the one this request id began (as it is now)."""
        self._job(caller, request.job, action, mutating=True)

        async def begin() -> operations_pb2.Operation:
            return start()

        operation, replayed = await self._once(caller, method, request, begin)
        return self._service.operations.get(operation.name)[0] if replayed else operation

    async def _start_checkpoint(
        self, caller: Identity, request: coordinator_pb2.CheckpointRequest
    ) -> operations_pb2.Operation:
        requests.check_checkpoint(request)

        def start() -> operations_pb2.Operation:
            run = self._service.checkpoints.start(
                request.job,
                leave_running=request.leave_running,
                timeout=request.timeout_seconds,
                external=request.external or "refuse",
            )
            return self._service.operations.track_checkpoint(run, requested_by=caller.name)

        return await self._start(caller, "StartCheckpoint", request, "checkpoint", start)

    async def _start_restart(
        self, caller: Identity, request: coordinator_pb2.RestartRequest
    ) -> operations_pb2.Operation:
        requests.check_restart(request)

        def start() -> operations_pb2.Operation:
            run = self._service.restarts.start(request)
            return self._service.operations.track_restart(run, requested_by=caller.name)

        return await self._start(caller, "StartRestart", request, "restart", start)

    async def StartCheckpoint(
        self, request: coordinator_pb2.CheckpointRequest, context: Context
    ) -> operations_pb2.Operation:
        async with domain_errors(context):
            caller = self._callers.identify(context)
            return await self._start_checkpoint(caller, request)

    async def StartRestart(
        self, request: coordinator_pb2.RestartRequest, context: Context
    ) -> operations_pb2.Operation:
        async with domain_errors(context):
            caller = self._callers.identify(context)
            return await self._start_restart(caller, request)

    async def Checkpoint(
        self, request: coordinator_pb2.CheckpointRequest, context: Context
    ) -> AsyncIterator[coordinator_pb2.CheckpointEvent]:
        """StartCheckpoint, then the run's progress (or, finished before, its outcome)."""
        async with domain_errors(context):
            caller = self._callers.identify(context)
            operation = await self._start_checkpoint(caller, request)
            run = self._service.operations.run_of(operation.name)
        if isinstance(run, CheckpointRun):
            async for event in run.follow():
                yield event
        else:
            outcome = outcome_of(operation, coordinator_pb2.CheckpointOutcome())
            yield coordinator_pb2.CheckpointEvent(outcome=outcome)

    async def Restart(
        self, request: coordinator_pb2.RestartRequest, context: Context
    ) -> AsyncIterator[coordinator_pb2.RestartEvent]:
        """StartRestart, then the run's progress (or, finished before, its outcome)."""
        async with domain_errors(context):
            caller = self._callers.identify(context)
            operation = await self._start_restart(caller, request)
            run = self._service.operations.run_of(operation.name)
        if isinstance(run, RestartRun):
            async for event in run.follow():
                yield event
        else:
            outcome = outcome_of(operation, coordinator_pb2.RestartOutcome())
            yield coordinator_pb2.RestartEvent(outcome=outcome)

    async def WatchJob(
        self, request: coordinator_pb2.WatchJobRequest, context: Context
    ) -> AsyncIterator[coordinator_pb2.JobEvent]:
        async with domain_errors(context):
            caller = self._callers.identify(context)
            self._job(caller, request.job, "watch", mutating=False)
            events = self._service.events
            subscription = events.subscribe(request.job)  # before the snapshot: nothing lost
            snapshot = coordinator_pb2.JobEvent(snapshot=self._job_proto(request.job))
            events.stamp(request.job, snapshot)
            async for event in events.follow(subscription, first=snapshot):
                yield event

    async def ListCheckpoints(
        self, request: coordinator_pb2.ListCheckpointsRequest, context: Context
    ) -> coordinator_pb2.ListCheckpointsResponse:
        async with domain_errors(context):
            caller = self._callers.identify(context)
            job = self._job(caller, request.job, "see the checkpoints of", mutating=False)
            records = self._service.checkpoints.list(request.job)
            agents = self._service.jobs.agents()
        return coordinator_pb2.ListCheckpointsResponse(
            checkpoints=[checkpoint_to_proto(r, job.latest_checkpoint, agents) for r in records]
        )

    async def VerifyCheckpoint(
        self, request: coordinator_pb2.VerifyCheckpointRequest, context: Context
    ) -> coordinator_pb2.VerifyCheckpointResponse:
        async with domain_errors(context):
            caller = self._callers.identify(context)
            self._job(caller, request.job, "verify", mutating=True)
            result = await self._service.checkpoints.verify(request.job, request.checkpoint)
        return verification_to_proto(result)

    async def SetSchedule(
        self, request: coordinator_pb2.SetScheduleRequest, context: Context
    ) -> coordinator_pb2.Schedule:
        async with domain_errors(context):
            caller = self._callers.identify(context)
            requests.check_schedule(request)
            self._job(caller, request.job, "schedule checkpoints of", mutating=True)

            async def set_schedule() -> coordinator_pb2.Schedule:
                record = self._service.schedules.set(
                    request.job,
                    every_seconds=request.every_seconds,
                    keep=request.keep,
                    stop=request.stop,
                )
                return schedule_to_proto(record)

            reply, _ = await self._once(caller, "SetSchedule", request, set_schedule)
        return reply

    async def PinCheckpoint(
        self, request: coordinator_pb2.PinCheckpointRequest, context: Context
    ) -> coordinator_pb2.CheckpointInfo:
        async with domain_errors(context):
            caller = self._callers.identify(context)
            requests.check_pin(request)
            job = self._job(caller, request.job, "pin checkpoints of", mutating=True)
            record = self._service.checkpoints.pin(request.job, request.checkpoint, request.pinned)
        return checkpoint_to_proto(record, job.latest_checkpoint, self._service.jobs.agents())


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
    callers = Callers(front_door)
    servicer = CoordinatorServicer(service, callers, policy)
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(servicer, server)
    operations_pb2_grpc.add_OperationsServicer_to_server(  # type: ignore[no-untyped-call]
        OperationsServicer(service, callers, policy), server
    )
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(SERVED, server)
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
    for name in ("", *SERVED):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port
