"""The in-process tier (dask's ``gen_cluster`` in spirit): the real coordinator services
(coordinator.daemon.build over its SQLite store and checkpoint folders) and real agents
(agent.daemon.Agent and its order handling) in one process, joined by an in-memory control
plane with faults (tests.inproc.network), each host's CRIU work faked (tests.inproc.fakehost),
on virtual time (tests.inproc.vtime): a deadline of a minute passes in microseconds.

Either side can be killed at any await and started again: every task a component starts is
tagged with its owner (a context variable that tasks inherit), and killing it cancels them all
without the graceful shutdown a SIGTERM would run; what a real process leaves behind (the state
database, image files, agent records, a fake host's ranks and locks) stays.

``@cluster_test(hosts=3)`` runs an ``async def test(cluster)`` in a fresh cluster and checks
after it that nothing is left frozen or locked."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import tempfile
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from agent.daemon import Agent
from coordinator.checkpoints import CheckpointRun
from coordinator.daemon import Coordinator, build, sweep_period
from coordinator.registry import ALIVE
from crctl.clock import Clock
from crctl.config import Config
from crctl.identity import Identity
from crctl.plugins import PER_RANK_ENDPOINTS
from crctl.v1 import control_pb2, coordinator_pb2
from tests.inproc import vtime
from tests.inproc.fakehost import FakeEngine, FakeHost, FakeRank
from tests.inproc.network import LoopbackLink, LoopbackPlane, Network

T = TypeVar("T")
OWNER: contextvars.ContextVar[str] = contextvars.ContextVar("owner", default="")
VIRTUAL_LIMIT = 3600.0  # seconds of virtual time a test may take

HEARTBEAT = 0.5
LOST_AFTER = 3.0
PREPARE_TIMEOUT = 10.0
COMMIT_TIMEOUT = 4.0


ROOT = Identity(uid=0, gid=0, groups=(), name="root")


class LoopClock(Clock):
    """The coordinator's clock on the loop's (virtual) time."""

    def now(self) -> float:
        return 1_700_000_000.0 + asyncio.get_running_loop().time()

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()


class CoordinatorDied(RuntimeError):
    pass


class Cluster:
    def __init__(self, root: Path, hosts: Sequence[str]) -> None:
        self.root = root
        self.hosts = list(hosts)
        self.network = Network()
        self.fake = {h: FakeHost(h, [f"10.0.0.{i}"]) for i, h in enumerate(self.hosts, start=1)}
        self.config = Config(
            state_db=root / "coordinator.db",
            checkpoint_dir=root / "checkpoints",
            heartbeat_interval=HEARTBEAT,
            agent_lost_after=LOST_AFTER,
            checkpoint_timeout=PREPARE_TIMEOUT,
            commit_timeout=COMMIT_TIMEOUT,
        )
        self.coordinator: Coordinator | None = None
        self._plane: LoopbackPlane | None = None
        self._tasks: dict[str, set[asyncio.Task[Any]]] = {}
        self._contexts: dict[str, contextvars.Context] = {}
        self.agents: dict[str, Agent] = {}
        # Hosts whose agent is of an older version, without these capabilities.
        self.lacking: dict[str, set[str]] = {}

    # --- owners and their tasks ---

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        def factory(
            loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kw: Any
        ) -> asyncio.Task[Any]:
            task = asyncio.Task(coro, loop=loop, **kw)
            owner = OWNER.get() if kw.get("context") is None else kw["context"].get(OWNER)
            if owner:
                self._tasks.setdefault(owner, set()).add(task)
                task.add_done_callback(self._tasks[owner].discard)
            return task

        loop.set_task_factory(factory)  # type: ignore[arg-type]

    def _context(self, owner: str) -> contextvars.Context:
        context = contextvars.copy_context()
        context.run(OWNER.set, owner)
        self._contexts[owner] = context
        return context

    def _start(self, owner: str, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        return asyncio.get_running_loop().create_task(coro, context=self._contexts[owner])

    async def _kill(self, owner: str) -> None:
        tasks = [t for t in self._tasks.pop(owner, set()) if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._contexts.pop(owner, None)

    # --- the coordinator ---

    async def start_coordinator(self) -> Coordinator:
        assert self.coordinator is None, "the coordinator runs already"
        context = self._context("coordinator")
        plane = LoopbackPlane(self.network)

        def wire() -> Coordinator:
            coordinator = build(self.config, plane, LoopClock())
            plane.set_handler(coordinator.service.on_agent_message)
            plane.attach()
            return coordinator

        coordinator = context.run(wire)
        self._plane = plane
        self.coordinator = coordinator
        self._start("coordinator", plane.serve())
        self._start("coordinator", coordinator.service.run_sweeper(sweep_period(self.config)))
        self._start("coordinator", coordinator.scheduler.run())
        return coordinator

    async def kill_coordinator(self) -> None:
        """SIGKILL: its tasks stop where they are; its database stays."""
        assert self.coordinator is not None and self._plane is not None
        self._plane.detach()
        await self._kill("coordinator")
        self.coordinator.store.close()
        self.coordinator = None
        self._plane = None

    async def in_coordinator(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call`` as the coordinator (the tasks it starts die with it)."""
        if self.coordinator is None:
            raise CoordinatorDied("the coordinator is not running")

        async def run() -> T:
            return await call()

        try:
            return await self._start("coordinator", run())
        except asyncio.CancelledError:
            if self.coordinator is None or "coordinator" not in self._contexts:
                raise CoordinatorDied("the coordinator died during the call") from None
            raise

    # --- agents ---

    async def start_agent(self, host: str) -> Agent:
        assert host not in self.agents, f"the agent on {host} runs already"
        context = self._context(f"agent-{host}")
        fake = self.fake[host]
        config = Config(
            host=host,
            heartbeat_interval=HEARTBEAT,
            agent_work_dir=self.root / "agents" / host,
        )
        info = control_pb2.AgentInfo(
            host=host,
            addresses=fake.addresses,
            criu_version="4.2.1",
            capabilities=[
                c
                for c in ("criu", "nft", "freezer_v2", PER_RANK_ENDPOINTS)
                if c not in self.lacking.get(host, set())
            ],
            agent_version="inproc",
            pid=1,
        )

        def make() -> Agent:
            return Agent(
                config, link=LoopbackLink(self.network, host), info=info, engine=FakeEngine(fake)
            )

        agent = context.run(make)
        self.agents[host] = agent
        self._start(f"agent-{host}", agent.run(asyncio.Event()))
        return agent

    async def kill_agent(self, host: str) -> None:
        """SIGKILL: no clean shutdown; the host's ranks run on, its dumps roll back."""
        self.agents.pop(host)
        link = self.network.links.get(host)
        if link is not None:
            link.close()
        await self._kill(f"agent-{host}")
        self.fake[host].agent_died()

    async def until(self, condition: Callable[[], object], what: str, timeout: float = 60) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)

    def alive(self) -> set[str]:
        if self.coordinator is None:
            return set()
        return {a.host for a in self.coordinator.registry.agents() if a.state == ALIVE}

    async def up(self) -> None:
        await self.start_coordinator()
        for host in self.hosts:
            await self.start_agent(host)
        await self.until(lambda: self.alive() == set(self.hosts), "every agent registered")

    # --- what a user does, through the coordinator's services ---

    @property
    def service(self) -> Any:
        assert self.coordinator is not None, "the coordinator is not running"
        return self.coordinator.service

    async def launch(self, job: str, hosts: Sequence[str]) -> None:
        for rank, host in enumerate(hosts):
            await self.in_coordinator(
                functools.partial(
                    self.service.jobs.launch, job, host, rank, ["app"], {}, owner=ROOT
                )
            )

    async def start_checkpoint(
        self, job: str, *, leave_running: bool = False, timeout: float = 0.0
    ) -> CheckpointRun:
        async def start() -> CheckpointRun:
            run = self.service.checkpoints.start(job, leave_running=leave_running, timeout=timeout)
            assert isinstance(run, CheckpointRun)
            return run

        return await self.in_coordinator(start)

    async def checkpoint(
        self, job: str, *, leave_running: bool = False, timeout: float = 0.0
    ) -> coordinator_pb2.CheckpointOutcome:
        run = await self.start_checkpoint(job, leave_running=leave_running, timeout=timeout)
        await run.done.wait()
        assert run.outcome is not None, "the checkpoint run ended without an outcome"
        return run.outcome

    async def restart(self, job: str, **request: Any) -> coordinator_pb2.RestartOutcome:
        async def go() -> coordinator_pb2.RestartOutcome:
            run = self.service.restarts.start(coordinator_pb2.RestartRequest(job=job, **request))
            outcome = None
            async for event in run.follow():
                if event.WhichOneof("event") == "outcome":
                    outcome = event.outcome
            assert outcome is not None
            return outcome

        return await self.in_coordinator(go)

    def job(self, job: str) -> Any:
        return self.service.jobs.get(job)

    def running(self, job: str) -> dict[int, FakeRank]:
        """The job's ranks that run (not exited, not frozen), on any host."""
        found: dict[int, FakeRank] = {}
        for fake in self.fake.values():
            for (j, number), rank in fake.ranks.items():
                if j == job and not rank.exited and not rank.frozen:
                    assert number not in found, f"rank {number} of {job} runs twice"
                    found[number] = rank
        return found

    def live(self, job: str) -> list[FakeRank]:
        """Every incarnation of the job's ranks that has not exited (frozen or not)."""
        return [
            rank
            for fake in self.fake.values()
            for (j, _), rank in fake.ranks.items()
            if j == job and not rank.exited
        ]

    def images_kept(self, checkpoint: str) -> bool:
        """Every image file the checkpoint's manifest lists is on disk, at its size."""
        record = self.service.checkpoints._store.checkpoint(checkpoint)
        assert record is not None and record.manifest
        manifest = json.loads(record.manifest)
        files = [f for r in manifest["ranks"] for f in r["files"]]
        assert files
        folder = Path(record.directory)
        return all(
            (folder / f["path"]).is_file() and (folder / f["path"]).stat().st_size == int(f["size"])
            for f in files
        )

    # --- what must hold after every test ---

    def check_nothing_left(self) -> None:
        for fake in self.fake.values():
            assert not fake.frozen(), f"frozen ranks left on {fake.name}: {fake.frozen()}"
            assert not fake.locks, f"locks left on {fake.name}: {fake.locks}"


def cluster_test(
    hosts: int = 3,
) -> Callable[[Callable[[Cluster], Awaitable[None]]], Callable[[], None]]:
    """Run ``async def test(cluster)`` on a fresh, started cluster of ``hosts`` hosts, on
    virtual time; afterwards, let every hold deadline pass and check nothing is left frozen or
    locked."""

    def decorate(test: Callable[[Cluster], Awaitable[None]]) -> Callable[[], None]:
        @functools.wraps(test)
        def run() -> None:
            with tempfile.TemporaryDirectory(prefix="crctl-inproc-") as tmp:
                cluster = Cluster(Path(tmp), [f"h{i}" for i in range(1, hosts + 1)])

                async def main() -> None:
                    cluster.install(asyncio.get_running_loop())
                    await cluster.up()
                    await asyncio.wait_for(test(cluster), VIRTUAL_LIMIT)
                    await asyncio.sleep(PREPARE_TIMEOUT * 4 + 60)  # every hold has ended
                    cluster.check_nothing_left()
                    for owner in list(cluster._tasks):
                        await cluster._kill(owner)
                    if cluster.coordinator is not None:
                        cluster.coordinator.store.close()

                vtime.run(main())

        # pytest must not see the wrapped function's `cluster` parameter as a fixture
        del run.__wrapped__  # type: ignore[attr-defined]
        return run

    return decorate
