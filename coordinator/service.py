"""The coordinator's domain layer: turns control-plane messages and timer ticks into registry
changes, and answers the API's questions. The gRPC servicer and the ZeroMQ socket only translate."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from coordinator.checkpoints import CheckpointService
from coordinator.idempotency import RequestLedger
from coordinator.job_events import JobEvents
from coordinator.jobs import JobService
from coordinator.operations import Operations
from coordinator.registry import AgentRegistry
from coordinator.restarts import RestartService
from coordinator.schedules import Scheduler
from coordinator.store import AgentRecord
from crctl.v1 import control_pb2

log = structlog.get_logger()


class CoordinatorService:
    def __init__(
        self,
        registry: AgentRegistry,
        jobs: JobService,
        checkpoints: CheckpointService,
        restarts: RestartService,
        *,
        events: JobEvents,
        operations: Operations,
        ledger: RequestLedger,
        schedules: Scheduler,
        heartbeat_interval: float,
        agent_keys: Sequence[bytes] = (),
    ) -> None:
        self._registry = registry
        self.jobs = jobs
        self.checkpoints = checkpoints
        self.restarts = restarts
        self.events = events
        self.operations = operations
        self.ledger = ledger
        self.schedules = schedules
        self._heartbeat_interval = heartbeat_interval
        self._agent_keys = list(agent_keys)

    async def on_agent_message(
        self, host: str, message: control_pb2.AgentMessage
    ) -> control_pb2.CoordinatorMessage | None:
        kind = message.WhichOneof("body")
        if kind == "register":
            return self._on_register(host, message.register.info)
        if kind == "heartbeat":
            return self._on_heartbeat(host, message.heartbeat)
        if kind == "rank_exited":
            self.jobs.on_rank_exited(host, message.rank_exited)
            return None
        log.warning("control_unexpected_message", agent=host, kind=kind)
        return None

    def _on_register(
        self, host: str, info: control_pb2.AgentInfo
    ) -> control_pb2.CoordinatorMessage:
        reply = control_pb2.CoordinatorMessage()
        if info.host != host:
            reason = f"host name {info.host!r} does not match the agent's key {host!r}"
            log.warning("agent_refused", agent=host, reason=reason)
            reply.register_ack.accepted = False
            reply.register_ack.reason = reason
            return reply
        record, revived = self._registry.register(info)
        self.jobs.reconcile(host, list(info.ranks))
        self.checkpoints.resolve(host, list(info.awaiting_decision))
        self.restarts.resolve(host, list(info.restoring))
        log.info(
            "agent_registered",
            agent=host,
            addresses=list(record.addresses),
            criu_version=record.criu_version,
            back_from_lost=revived,
        )
        reply.register_ack.accepted = True
        reply.register_ack.heartbeat_interval = self._heartbeat_interval
        reply.register_ack.agent_keys.extend(self._agent_keys)
        return reply

    def _on_heartbeat(
        self, host: str, heartbeat: control_pb2.Heartbeat
    ) -> control_pb2.CoordinatorMessage:
        reply = control_pb2.CoordinatorMessage()
        if not self._registry.knows(host):
            reply.heartbeat_ack.known = False
            return reply
        transition = self._registry.heartbeat(host, list(heartbeat.awaiting_decision))
        if transition is not None:
            log.info("agent_alive", agent=host, silent_for=round(transition.silent_for, 3))
        self.checkpoints.resolve(host, list(heartbeat.awaiting_decision))
        self.restarts.resolve(host, list(heartbeat.restoring))
        reply.heartbeat_ack.known = True
        return reply

    def sweep(self) -> None:
        """Agents silent for too long are lost: a checkpoint or restart that needs one fails
        now instead of at its deadline."""
        for transition in self._registry.sweep():
            log.warning(
                "agent_lost", agent=transition.host, silent_for=round(transition.silent_for, 3)
            )
            self.checkpoints.agent_lost(transition.host)
            self.restarts.agent_lost(transition.host)

    async def run_sweeper(self, period: float) -> None:
        while True:
            self.sweep()
            self.checkpoints.copies.drop_retired()  # images a host was down to drop
            self.checkpoints.copies.copy_again()  # copies a partner was down to make
            self.operations.settle()
            self.operations.expire()
            await asyncio.sleep(period)

    def agents(self) -> list[AgentRecord]:
        return self._registry.agents()

    def awaiting_decision(self, job: str) -> list[tuple[str, str, str]]:
        """(checkpoint, host, what the record says) for each host that last said it awaits the
        decision on one of the job's checkpoints."""
        found = []
        for host, checkpoints in sorted(self._registry.awaiting().items()):
            for checkpoint in checkpoints:
                of, committed = self.checkpoints.decision(checkpoint)
                if of == job:
                    found.append((checkpoint, host, "committed" if committed else "aborted"))
        return found
