"""How a crctl error raised while serving a call ends it: the one mapping of crctl.status, as a
google.rpc.Status with its ErrorInfo, for every servicer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc.aio

from crctl.errors import CrctlError
from crctl.status import rich_status, status_for, trailer

Context = grpc.aio.ServicerContext[Any, Any]


@asynccontextmanager
async def domain_errors(context: Context) -> AsyncIterator[None]:
    """A crctl error raised inside ends the RPC with its mapped status (crctl.status)."""
    try:
        yield
    except CrctlError as exc:
        # The ErrorInfo is also what marks the status as the coordinator's own answer, not a
        # transport failure.
        await context.abort(
            status_for(exc), exc.message, trailing_metadata=trailer(rich_status(exc))
        )
