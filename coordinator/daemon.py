"""Runs the coordinator process: state store, agent registry, ZeroMQ control plane, gRPC API."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog

from coordinator.access import AccessPolicy
from coordinator.api import create_server
from coordinator.checkpoints import CheckpointRun, CheckpointService, CheckpointSettings
from coordinator.control import ControlPlane, Plane
from coordinator.front_door import FrontDoor
from coordinator.idempotency import RequestLedger
from coordinator.image_copies import ImageCopies
from coordinator.job_events import JobEvents
from coordinator.jobs import JobService
from coordinator.metrics import CoordinatorMetrics, MetricsServer, serve_metrics
from coordinator.operations import Operations
from coordinator.registry import AgentRegistry
from coordinator.restarts import RestartService
from coordinator.schedules import Scheduler
from coordinator.service import CoordinatorService
from coordinator.storage import CheckpointStore
from coordinator.store import Store
from crctl import keys
from crctl.clock import Clock, SystemClock
from crctl.config import Config
from crctl.errors import ConfigError, CrctlError
from crctl.identity import group_ids, user_ids
from crctl.tls import api_dir, server_credentials

log = structlog.get_logger()


@dataclass(frozen=True)
class Coordinator:
    """The coordinator's services, wired; the transport around them is the caller's."""

    store: Store
    registry: AgentRegistry
    service: CoordinatorService
    events: JobEvents  # every job's events: WatchJob callers and the metrics follow them
    scheduler: Scheduler


def build(config: Config, plane: Plane, clock: Clock) -> Coordinator:
    """Open the durable state and wire the services over ``plane``; recover what an earlier
    coordinator left unfinished (checkpoints never decided, restarts under way). Needs a
    running event loop (recovery goes on in the background)."""
    store = Store(config.state_db)
    registry = AgentRegistry(store, clock, lost_after=config.agent_lost_after)
    events = JobEvents(clock)
    jobs = JobService(store, registry, plane, clock, events)
    files = CheckpointStore(config.checkpoint_dir)
    checkpoints = CheckpointService(
        store=store,
        jobs=jobs,
        plane=plane,
        files=files,
        clock=clock,
        copies=ImageCopies(
            store=store,
            files=files,
            plane=plane,
            agents=jobs.agents,
            replicas=config.replicas,
            retry_after=config.image_retry_after,
        ),
        settings=CheckpointSettings(
            prepare_timeout=config.checkpoint_timeout,
            commit_timeout=config.commit_timeout,
            retain=config.retain_checkpoints,
        ),
    )
    restarts = RestartService(
        store=store,
        jobs=jobs,
        plane=plane,
        clock=clock,
        step_timeout=config.checkpoint_timeout,
        recovery_wait=2 * config.agent_lost_after,
    )
    checkpoints.recover()
    restarts.recover()

    def start_checkpoint(job: str, *, leave_running: bool, requested_by: str) -> CheckpointRun:
        run = checkpoints.start(job, leave_running=leave_running, timeout=0)
        operations.track_checkpoint(run, requested_by=requested_by)
        return run

    operations = Operations(store, clock, events, keep_for=config.operations_keep_for)
    operations.settle()
    scheduler = Scheduler(
        store=store, jobs=jobs, events=events, clock=clock, start_checkpoint=start_checkpoint
    )
    service = CoordinatorService(
        registry,
        jobs,
        checkpoints,
        restarts,
        events=events,
        operations=operations,
        ledger=RequestLedger(store, clock),
        schedules=scheduler,
        heartbeat_interval=config.heartbeat_interval,
        agent_keys=list(keys.allowed_agent_keys(config.keys_dir)),
    )
    return Coordinator(
        store=store, registry=registry, service=service, events=events, scheduler=scheduler
    )


def start_metrics(config: Config, coordinator: Coordinator) -> MetricsServer | None:
    """Metrics fed by the jobs' events, served at metrics_address (None when it is empty)."""
    if not config.metrics_address:
        return None
    metrics = CoordinatorMetrics(
        agent_states=lambda: [agent.state for agent in coordinator.registry.agents()],
        in_flight=coordinator.service.operations.in_flight,
    )
    coordinator.events.listen(metrics.on_event)
    return serve_metrics(config.metrics_address, metrics.registry)


def private_dir(api_socket: Path) -> Path:
    """The root-only directory beside the API socket where gRPC itself listens."""
    return api_socket.parent / f".{api_socket.name}.private"


def access_policy(config: Config) -> AccessPolicy:
    def items(value: str) -> tuple[str, ...]:
        return tuple(item.strip() for item in value.split(",") if item.strip())

    try:
        return AccessPolicy(
            admin_uids=user_ids(items(config.admin_users)),
            admin_gids=group_ids(items(config.admin_groups)),
        )
    except CrctlError as exc:
        raise ConfigError(f"admin_users / admin_groups: {exc.message}") from None


def tcp_credentials(config: Config) -> grpc.ServerCredentials | None:
    """The TCP listener's mutual-TLS credentials (keys_dir/api), if it is configured."""
    if not config.api_tcp_address:
        return None
    return server_credentials(api_dir(config))


def sweep_period(config: Config) -> float:
    return min(config.heartbeat_interval, config.agent_lost_after) / 2


async def serve(config: Config) -> None:
    clock = SystemClock()
    plane = ControlPlane(config.control_endpoint, config.keys_dir)
    coordinator = build(config, plane, clock)
    store, registry, service = coordinator.store, coordinator.registry, coordinator.service
    metrics = start_metrics(config, coordinator)  # before anything listens: a bad address fails
    scheduler = coordinator.scheduler
    plane.set_handler(service.on_agent_message)
    plane.start()
    door = FrontDoor(config.api_socket, private_dir(config.api_socket))
    server, port = await create_server(
        service,
        front_door=door,
        policy=access_policy(config),
        tcp_address=config.api_tcp_address,
        tls=tcp_credentials(config),
    )
    await server.start()
    await door.open()
    log.info(
        "coordinator_started",
        api_socket=str(config.api_socket),
        api_tcp_address=config.api_tcp_address,
        api_tcp_port=port,
        control_endpoint=config.control_endpoint,
        state_db=str(config.state_db),
        known_agents=len(registry.agents()),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tasks = [
        asyncio.create_task(plane.serve(), name="control"),
        asyncio.create_task(
            service.run_sweeper(sweep_period(config)),
            name="sweeper",
        ),
        asyncio.create_task(scheduler.run(), name="scheduler"),
    ]
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    failed = [t for t in done if t is not stopper and t.exception() is not None]
    for task in failed:
        log.error("coordinator_task_failed", task=task.get_name(), error=repr(task.exception()))
    log.info("coordinator_stopping")
    for task in tasks:
        task.cancel()
    await door.close()
    await server.stop(grace=1.0)
    plane.close()
    if metrics is not None:
        await asyncio.to_thread(metrics.close)
    store.close()
    if failed:
        raise CrctlError(
            f"coordinator stopped: its {failed[0].get_name()} task failed "
            f"({failed[0].exception()!r}); see its log"
        )


def run(config: Config) -> None:
    asyncio.run(serve(config))
