"""Jobs and their ranks: launching a rank on a host's agent, killing a job, and recording ranks
that exit on their own."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import structlog

from coordinator.control import Plane
from coordinator.job_events import JobEvents, rank_changed
from coordinator.registry import ALIVE, AgentRegistry
from coordinator.store import AgentRecord, JobRecord, RankRecord, Store
from crctl.clock import Clock
from crctl.errors import ConfigError, ConflictError, CrctlError, NotFoundError, UnavailableError
from crctl.identity import Identity
from crctl.v1 import control_pb2

log = structlog.get_logger()

JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
LAUNCH_TIMEOUT = 30.0
KILL_TIMEOUT = 15.0


def validate_job_name(job: str) -> None:
    if not JOB_NAME.fullmatch(job):
        raise ConfigError(
            f"bad job name {job!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def rank_owner(caller: Identity, existing: JobRecord | None) -> control_pb2.RankOwner:
    """Whom a rank runs as: the caller, in a job that is the caller's (or new)."""
    return control_pb2.RankOwner(
        job_owner_uid=existing.owner_uid if existing is not None else caller.uid,
        uid=caller.uid,
        gid=caller.gid,
        groups=list(caller.groups),
        name=caller.name,
    )


class JobService:
    def __init__(
        self, store: Store, registry: AgentRegistry, plane: Plane, clock: Clock, events: JobEvents
    ) -> None:
        self._store = store
        self._registry = registry
        self._plane = plane
        self._clock = clock
        self._events = events
        self._busy: dict[str, str] = {}  # job -> what runs on it now

    def claim(self, job: str, operation: str) -> None:
        """One checkpoint or restart of a job at a time: refuse a second while one runs."""
        if job in self._busy:
            raise ConflictError(
                f"{self._busy[job]} of {job} is already running; wait for it to finish", job=job
            )
        self._busy[job] = operation

    def release(self, job: str) -> None:
        self._busy.pop(job, None)

    def busy(self, job: str) -> str | None:
        """What runs on the job now ("checkpoint ckpt-...", "restart rst-..."), or None."""
        return self._busy.get(job)

    def require_alive(self, host: str, job: str | None = None) -> AgentRecord:
        agent = self._registry.get(host)
        if agent is None:
            raise NotFoundError(
                f"unknown host {host!r}: no agent registered there", host=host, job=job
            )
        if agent.state != ALIVE:
            raise UnavailableError(f"the agent on {host} is {agent.state}", host=host, job=job)
        return agent

    def agent(self, host: str) -> AgentRecord | None:
        return self._registry.get(host)

    def agents(self) -> dict[str, AgentRecord]:
        """Every agent the coordinator knows, by host."""
        return {agent.host: agent for agent in self._registry.agents()}

    def get(self, job: str) -> JobRecord:
        record = self._store.job(job)
        if record is None:
            raise NotFoundError(f"unknown job {job!r}", job=job)
        return record

    def find(self, job: str) -> JobRecord | None:
        return self._store.job(job)

    def jobs(self) -> list[JobRecord]:
        return self._store.jobs()

    async def launch(
        self,
        job: str,
        host: str,
        rank: int,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        owner: Identity,
        cwd: str = "",
        umask: int = 0o022,
    ) -> RankRecord:
        """Launch a rank that runs as ``owner`` (the caller: a job's ranks are its owner's)."""
        validate_job_name(job)
        if not argv:
            raise ConfigError("nothing to launch: give the rank's command after --")
        self.require_alive(host, job)
        existing = self._store.job(job)
        taken = {r.rank for r in existing.ranks} if existing else set()
        if rank < 0:
            rank = max(taken, default=-1) + 1
        elif rank in taken:
            raise ConflictError(f"job {job} already has a rank {rank}", job=job, host=host)
        order = control_pb2.CoordinatorMessage()
        order.launch_rank.job = job
        order.launch_rank.rank = rank
        order.launch_rank.argv.extend(argv)
        order.launch_rank.env.update(env)
        order.launch_rank.owner.CopyFrom(rank_owner(owner, existing))
        order.launch_rank.cwd = cwd
        order.launch_rank.umask = umask
        reply = await self._plane.request(host, order, LAUNCH_TIMEOUT)
        launched = reply.rank_launched
        if reply.WhichOneof("body") != "rank_launched" or launched.error:
            reason = launched.error or reply.order_failed.reason or "unexpected reply"
            raise CrctlError(
                f"launch of rank {rank} failed on {host}: {reason}", job=job, host=host
            )
        record = RankRecord(job, rank, host, launched.pid, "running", None, tuple(argv))
        self._store.add_rank(record, self._clock.now(), owner_uid=owner.uid, owner=owner.name)
        log.info("rank_launched", job=job, rank=rank, agent=host, pid=launched.pid)
        self._events.publish(
            job, rank_changed(rank, host, launched.pid, "running", reason="launched")
        )
        return record

    async def kill(self, job: str) -> JobRecord:
        record = self.get(job)
        hosts = sorted({r.host for r in record.ranks if r.state == "running"})
        failures = []
        for host in hosts:
            order = control_pb2.CoordinatorMessage()
            order.kill_job.job = job
            try:
                await self._plane.request(host, order, KILL_TIMEOUT)
            except CrctlError as exc:
                failures.append(f"{host}: {exc.message}")
        if failures:
            raise UnavailableError(
                f"could not kill every rank of {job}: {'; '.join(failures)}", job=job
            )
        self._store.set_job_ranks_state(job, "killed")
        log.info("job_killed", job=job, hosts=hosts)
        killed = self.get(job)
        for rank in record.ranks:
            if rank.state == "running":
                self._events.publish(job, rank_changed(rank.rank, rank.host, rank.pid, "killed"))
        return killed

    def reconcile(self, host: str, running: list[control_pb2.RankRef]) -> None:
        """An agent (re)registered listing the ranks it runs: ranks believed running on that
        host but not listed ended while no agent watched them."""
        listed = {(r.job, r.rank) for r in running}
        for job in self._store.jobs():
            for rank in job.ranks:
                if (
                    rank.host == host
                    and rank.state == "running"
                    and (job.job, rank.rank) not in listed
                ):
                    self._store.set_rank_state(job.job, rank.rank, "lost")
                    self._events.publish(
                        job.job,
                        rank_changed(
                            rank.rank,
                            host,
                            rank.pid,
                            "lost",
                            reason="not running when its agent registered",
                        ),
                    )
                    log.warning(
                        "rank_lost",
                        job=job.job,
                        rank=rank.rank,
                        agent=host,
                        reason="not running when its agent registered",
                    )

    def on_rank_exited(self, host: str, event: control_pb2.RankExited) -> None:
        record = self._store.job(event.job)
        rank = next((r for r in record.ranks if r.rank == event.rank), None) if record else None
        if rank is None or rank.host != host:
            log.warning("rank_exit_unknown", job=event.job, rank=event.rank, agent=host)
            return
        if rank.state != "running":
            return
        self._store.set_rank_state(event.job, event.rank, "exited", event.exit_status)
        self._events.publish(
            event.job,
            rank_changed(event.rank, host, rank.pid, "exited", exit_status=event.exit_status),
        )
        log.info(
            "rank_exited", job=event.job, rank=event.rank, agent=host, exit_status=event.exit_status
        )
