"""A small synchronous client for the coordinator's gRPC API, raising crctl errors."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeVar

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2

from crctl.config import Config
from crctl.errors import ConfigError, CoordinatorUnreachableError, CrctlError
from crctl.lro import operation_name
from crctl.status import error_for, error_from_call
from crctl.tls import client_credentials
from crctl.v1 import coordinator_pb2, coordinator_pb2_grpc

Reply = TypeVar("Reply")


class CoordinatorClient:
    def __init__(
        self,
        address: str,
        *,
        timeout: float = 10.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """``address``: ``unix:PATH`` (the kernel tells the coordinator who calls), or
        ``HOST:PORT`` with TLS ``credentials`` carrying a client certificate."""
        self.address = address
        self._timeout = timeout
        if credentials is not None:
            self._channel = grpc.secure_channel(address, credentials)
        else:
            self._channel = grpc.insecure_channel(address)
        self._stub = coordinator_pb2_grpc.CoordinatorStub(self._channel)
        self._operations = operations_pb2_grpc.OperationsStub(self._channel)  # type: ignore[no-untyped-call]

    @classmethod
    def for_config(cls, config: Config, *, timeout: float = 10.0) -> CoordinatorClient:
        """A client of the coordinator the configuration names (its Unix socket by default;
        over TCP only with the api_tls_* certificate files)."""
        address = config.client_address()
        credentials = client_credentials(config)
        if credentials is None and not address.startswith("unix:"):
            raise ConfigError(
                f"api_address {address} is a TCP address: the coordinator serves TCP only with "
                "TLS; set api_tls_ca, api_tls_cert and api_tls_key (from `crctl keys api-client`)"
            )
        return cls(address, timeout=timeout, credentials=credentials)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _error(self, exc: grpc.RpcError) -> CrctlError:
        from_coordinator = error_from_call(exc)
        if from_coordinator is not None:
            return from_coordinator
        code = exc.code()
        details = exc.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE:
            return CoordinatorUnreachableError(
                f"coordinator unreachable at {self.address} ({details}); "
                "is `crctl coordinator` running? (set --api-address or CRCTL_API_ADDRESS)"
            )
        return error_for(code, details)

    def _call(
        self, method: Callable[..., Reply], request: object, *, deadline: bool = True
    ) -> Reply:
        try:
            return method(request, timeout=self._timeout if deadline else None)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def list_agents(self) -> list[coordinator_pb2.Agent]:
        reply = self._call(self._stub.ListAgents, coordinator_pb2.ListAgentsRequest())
        return list(reply.agents)

    def launch(
        self,
        job: str,
        host: str,
        rank: int,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        cwd: str = "",
        umask: int | None = None,
        request_id: str = "",
    ) -> coordinator_pb2.LaunchResponse:
        request = coordinator_pb2.LaunchRequest(
            job=job,
            host=host,
            rank=rank,
            argv=list(argv),
            env=dict(env),
            cwd=cwd,
            request_id=request_id,
        )
        if umask is not None:
            request.umask = umask
        return self._call(self._stub.Launch, request)

    def jobs(self) -> list[coordinator_pb2.Job]:
        return list(self._call(self._stub.ListJobs, coordinator_pb2.ListJobsRequest()).jobs)

    def job(self, job: str) -> coordinator_pb2.Job:
        return self._call(self._stub.GetJob, coordinator_pb2.GetJobRequest(job=job))

    def kill(self, job: str, request_id: str = "") -> coordinator_pb2.Job:
        request = coordinator_pb2.KillJobRequest(job=job, request_id=request_id)
        return self._call(self._stub.KillJob, request).job

    def checkpoint(
        self,
        job: str,
        *,
        leave_running: bool,
        timeout: float,
        request_id: str,
        external: str = "refuse",
    ) -> Iterator[coordinator_pb2.CheckpointEvent]:
        """Stream a checkpoint's progress; the last event is its outcome. No client deadline:
        the coordinator's per-phase deadlines bound it."""
        request = coordinator_pb2.CheckpointRequest(
            job=job,
            leave_running=leave_running,
            timeout_seconds=timeout,
            request_id=request_id,
            external=external,
        )
        try:
            yield from self._stub.Checkpoint(request)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def checkpoint_outcome(
        self, job: str, *, leave_running: bool, timeout: float = 0.0
    ) -> coordinator_pb2.CheckpointOutcome | None:
        """A new checkpoint (a fresh request id) followed to its outcome, its progress
        unread; None if the stream ended without one."""
        for event in self.checkpoint(
            job, leave_running=leave_running, timeout=timeout, request_id=uuid.uuid4().hex
        ):
            if event.WhichOneof("event") == "outcome":
                return event.outcome
        return None

    def checkpoints(self, job: str) -> list[coordinator_pb2.CheckpointInfo]:
        reply = self._call(
            self._stub.ListCheckpoints, coordinator_pb2.ListCheckpointsRequest(job=job)
        )
        return list(reply.checkpoints)

    def verify(self, job: str, checkpoint: str = "") -> coordinator_pb2.VerifyCheckpointResponse:
        """Have the coordinator check a committed checkpoint's images against its manifest. No
        client deadline: it reads every byte of the checkpoint, however large."""
        request = coordinator_pb2.VerifyCheckpointRequest(job=job, checkpoint=checkpoint)
        return self._call(self._stub.VerifyCheckpoint, request, deadline=False)

    def restart(
        self, request: coordinator_pb2.RestartRequest
    ) -> Iterator[coordinator_pb2.RestartEvent]:
        """Stream a restart's progress; the last event is its outcome."""
        try:
            yield from self._stub.Restart(request)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def restart_outcome(
        self, request: coordinator_pb2.RestartRequest
    ) -> coordinator_pb2.RestartOutcome | None:
        """The restart followed to its outcome, its progress unread; None if the stream
        ended without one."""
        for event in self.restart(request):
            if event.WhichOneof("event") == "outcome":
                return event.outcome
        return None

    def set_schedule(
        self, job: str, *, every: float, keep: int = 0, stop: bool = False, request_id: str = ""
    ) -> coordinator_pb2.Schedule:
        """Checkpoint ``job`` every ``every`` seconds (0: no more), keeping its newest
        ``keep`` (0: the coordinator's default)."""
        request = coordinator_pb2.SetScheduleRequest(
            job=job, every_seconds=every, keep=keep, stop=stop, request_id=request_id
        )
        return self._call(self._stub.SetSchedule, request)

    def pin_checkpoint(
        self, job: str, checkpoint: str, *, pinned: bool = True
    ) -> coordinator_pb2.CheckpointInfo:
        request = coordinator_pb2.PinCheckpointRequest(
            job=job, checkpoint=checkpoint, pinned=pinned
        )
        return self._call(self._stub.PinCheckpoint, request)

    # --- operations (google.longrunning) ---

    def operation(self, name: str) -> operations_pb2.Operation:
        request = operations_pb2.GetOperationRequest(name=operation_name(name))
        reply: operations_pb2.Operation = self._call(self._operations.GetOperation, request)
        return reply

    def operations(self, filter_text: str = "") -> list[operations_pb2.Operation]:
        found: list[operations_pb2.Operation] = []
        token = ""
        while True:
            request = operations_pb2.ListOperationsRequest(
                name="operations", filter=filter_text, page_token=token
            )
            reply = self._call(self._operations.ListOperations, request)
            found.extend(reply.operations)
            token = reply.next_page_token
            if not token:
                return found

    def wait_operation(self, name: str, seconds: float) -> operations_pb2.Operation:
        """The operation once done, or as it is after ``seconds``."""
        request = operations_pb2.WaitOperationRequest(
            name=operation_name(name), timeout=duration_pb2.Duration(seconds=int(seconds))
        )
        try:
            reply: operations_pb2.Operation = self._operations.WaitOperation(
                request, timeout=seconds + self._timeout
            )
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        return reply

    def cancel_operation(self, name: str) -> None:
        request = operations_pb2.CancelOperationRequest(name=operation_name(name))
        self._call(self._operations.CancelOperation, request)

    def delete_operation(self, name: str) -> None:
        request = operations_pb2.DeleteOperationRequest(name=operation_name(name))
        self._call(self._operations.DeleteOperation, request)
