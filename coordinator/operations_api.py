"""The google.longrunning.Operations service over crctl's operations (coordinator.operations):
a thin translator, like coordinator.api, with the same callers and the same access rules (an
operation is its job's: its owner and the admins may see, wait on, cancel and delete it)."""

from __future__ import annotations

from typing import Any

import grpc.aio
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import empty_pb2

from coordinator.access import AccessPolicy, authorized
from coordinator.api_errors import domain_errors
from coordinator.callers import Callers
from coordinator.operations import KINDS
from coordinator.service import CoordinatorService
from crctl.errors import ConfigError
from crctl.identity import Identity
from crctl.lro import PREFIX

Context = grpc.aio.ServicerContext[Any, Any]

DEFAULT_WAIT = 60.0  # seconds WaitOperation waits without a timeout of its own
MAX_WAIT = 600.0
DEFAULT_PAGE = 100
MAX_PAGE = 1000
_FILTER_KEYS = ("job", "done", "kind")


def parse_filter(text: str) -> dict[str, str]:
    """``job=NAME``, ``done=true|false``, ``kind=checkpoint|restart``, joined by spaces or
    ``AND``."""
    terms: dict[str, str] = {}
    for word in text.replace(" AND ", " ").split():
        key, sep, value = word.partition("=")
        key, value = key.strip(), value.strip().strip('"')
        if not sep or key not in _FILTER_KEYS or not value:
            raise ConfigError(
                f"bad operations filter {text!r}: use job=NAME, done=true|false, "
                "kind=checkpoint|restart, joined by spaces or AND"
            )
        if key == "done" and value not in ("true", "false"):
            raise ConfigError(f"bad operations filter {text!r}: done is true or false")
        if key == "kind" and value not in KINDS:
            raise ConfigError(f"bad operations filter {text!r}: kind is checkpoint or restart")
        terms[key] = value
    return terms


def page_bounds(page_size: int, page_token: str) -> tuple[int, int]:
    if page_size < 0 or page_size > MAX_PAGE:
        raise ConfigError(
            f"bad page_size {page_size}: use 0 (the default, {DEFAULT_PAGE}) to {MAX_PAGE}"
        )
    if page_token and not page_token.isdigit():
        raise ConfigError(f"bad page_token {page_token!r}: pass back a next_page_token as is")
    start = int(page_token or 0)
    return start, start + (page_size or DEFAULT_PAGE)


class OperationsServicer(operations_pb2_grpc.OperationsServicer):
    def __init__(self, service: CoordinatorService, callers: Callers, policy: AccessPolicy) -> None:
        self._service = service
        self._callers = callers
        self._policy = policy

    def _named(self, caller: Identity, name: str, action: str, *, mutating: bool) -> str:
        """The operation's job, if the caller may ``action`` it."""
        if not name.startswith(PREFIX):
            raise ConfigError(f"bad operation name {name!r}: operation names are {PREFIX}<id>")
        job = self._service.operations.job_of(name)
        authorized(self._policy, caller, self._service.jobs.get(job), action, mutating=mutating)
        return job

    async def ListOperations(
        self, request: operations_pb2.ListOperationsRequest, context: Context
    ) -> operations_pb2.ListOperationsResponse:
        async with domain_errors(context):
            caller = self._callers.identify(context)
            if request.name not in ("", "operations"):
                raise ConfigError(
                    f"bad collection {request.name!r}: operations are listed under 'operations'"
                )
            terms = parse_filter(request.filter)
            start, end = page_bounds(request.page_size, request.page_token)
            done = None if "done" not in terms else terms["done"] == "true"
            visible = {j.job for j in self._service.jobs.jobs() if self._policy.may_see(caller, j)}
            listed = self._service.operations.list(
                job=terms.get("job"), done=done, kind=terms.get("kind")
            )
            found = [operation for operation, job in listed if job in visible]
        reply = operations_pb2.ListOperationsResponse(operations=found[start:end])
        if end < len(found):
            reply.next_page_token = str(end)
        return reply

    async def GetOperation(
        self, request: operations_pb2.GetOperationRequest, context: Context
    ) -> operations_pb2.Operation:
        async with domain_errors(context):
            caller = self._callers.identify(context)
            self._named(caller, request.name, "see the operations of", mutating=False)
            return self._service.operations.get(request.name)[0]

    async def WaitOperation(
        self, request: operations_pb2.WaitOperationRequest, context: Context
    ) -> operations_pb2.Operation:
        async with domain_errors(context):
            caller = self._callers.identify(context)
            self._named(caller, request.name, "wait on the operations of", mutating=False)
            timeout = DEFAULT_WAIT
            if request.HasField("timeout"):
                timeout = request.timeout.ToTimedelta().total_seconds()
                if timeout < 0:
                    raise ConfigError(f"bad timeout {timeout}s: a wait takes 0 s or more")
            remaining = context.time_remaining()
            if remaining is not None:  # answer before the caller's own deadline
                timeout = min(timeout, max(0.0, remaining - 0.2))
            return await self._service.operations.wait(request.name, min(timeout, MAX_WAIT))

    async def CancelOperation(
        self, request: operations_pb2.CancelOperationRequest, context: Context
    ) -> empty_pb2.Empty:
        async with domain_errors(context):
            caller = self._callers.identify(context)
            self._named(caller, request.name, "cancel the operations of", mutating=True)
            self._service.operations.cancel(request.name, by=caller.name)
        return empty_pb2.Empty()

    async def DeleteOperation(
        self, request: operations_pb2.DeleteOperationRequest, context: Context
    ) -> empty_pb2.Empty:
        async with domain_errors(context):
            caller = self._callers.identify(context)
            self._named(caller, request.name, "delete the operations of", mutating=True)
            self._service.operations.delete(request.name)
        return empty_pb2.Empty()
