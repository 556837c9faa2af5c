"""The gRPC API: a thin translator between protobuf and the coordinator's domain calls."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from coordinator.registry import ALIVE, LOST
from coordinator.service import CoordinatorService
from coordinator.store import AgentRecord
from crctl.errors import UnavailableError
from crctl.v1 import coordinator_pb2, coordinator_pb2_grpc

SERVICE_NAME = "crctl.v1.Coordinator"
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


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(self, service: CoordinatorService) -> None:
        self._service = service

    async def ListAgents(
        self, request: coordinator_pb2.ListAgentsRequest, context: Context
    ) -> coordinator_pb2.ListAgentsResponse:
        return coordinator_pb2.ListAgentsResponse(
            agents=[agent_to_proto(a) for a in self._service.agents()]
        )


async def create_server(service: CoordinatorService, address: str) -> tuple[grpc.aio.Server, int]:
    """Build the gRPC server (API + standard health service) bound to ``address``.
    Returns the server (not started) and the bound port (useful with port 0)."""
    server = grpc.aio.server()
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(service), server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise UnavailableError(f"cannot serve the gRPC API on {address}: address in use?")
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port
