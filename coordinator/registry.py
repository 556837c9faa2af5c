"""Agent membership and liveness: who registered, who is alive, who went silent.

Heartbeats are kept in memory and written to the store in batches by ``sweep`` (one transaction
per tick, not one per heartbeat); registrations and alive/lost transitions are written at once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from coordinator.store import AgentRecord, Store
from crctl.clock import Clock
from crctl.v1 import control_pb2

ALIVE = "alive"
LOST = "lost"


@dataclass(frozen=True)
class Transition:
    host: str
    state: str  # the new state
    silent_for: float


class AgentRegistry:
    def __init__(self, store: Store, clock: Clock, *, lost_after: float) -> None:
        self._store = store
        self._clock = clock
        self._lost_after = lost_after
        self._agents: dict[str, AgentRecord] = {a.host: a for a in store.agents()}
        self._dirty: set[str] = set()
        # What each agent said in its last heartbeat it awaits a decision for (not persisted:
        # agents say it again every heartbeat).
        self._awaiting: dict[str, tuple[str, ...]] = {}
        # Silence while the coordinator itself was down is not the agents' fault: nobody is
        # judged lost before lost_after has passed since this registry started.
        self._started = clock.now()

    def register(self, info: control_pb2.AgentInfo) -> tuple[AgentRecord, bool]:
        """Record a (re-)registration; returns the record and whether it came back from lost."""
        now = self._clock.now()
        previous = self._agents.get(info.host)
        record = AgentRecord(
            host=info.host,
            addresses=tuple(info.addresses),
            criu_version=info.criu_version,
            capabilities=tuple(info.capabilities),
            agent_version=info.agent_version,
            pid=info.pid,
            state=ALIVE,
            registered_at=now,
            last_heartbeat=now,
            image_endpoint=info.image_endpoint,
            image_server_key=info.image_server_key.decode("ascii", "replace"),
        )
        self._store.upsert_agent(record)
        self._agents[info.host] = record
        self._awaiting[info.host] = tuple(info.awaiting_decision)
        self._dirty.discard(info.host)
        return record, previous is not None and previous.state == LOST

    def knows(self, host: str) -> bool:
        return host in self._agents

    def heartbeat(self, host: str, awaiting: Sequence[str] = ()) -> Transition | None:
        """Note a heartbeat from a known host. Returns a Transition when the agent was lost and is
        alive again (written at once), None otherwise."""
        record = self._agents[host]
        self._awaiting[host] = tuple(awaiting)
        now = self._clock.now()
        self._agents[host] = replace(record, state=ALIVE, last_heartbeat=now)
        if record.state == LOST:
            self._store.update_agents({host: (ALIVE, now)})
            self._dirty.discard(host)
            return Transition(host=host, state=ALIVE, silent_for=now - record.last_heartbeat)
        self._dirty.add(host)
        return None

    def sweep(self) -> list[Transition]:
        """Mark agents silent for longer than ``lost_after`` as lost and persist heartbeats."""
        now = self._clock.now()
        transitions = []
        for host, record in self._agents.items():
            silent_for = now - record.last_heartbeat
            judged_silence = now - max(record.last_heartbeat, self._started)
            if record.state == ALIVE and judged_silence > self._lost_after:
                self._agents[host] = replace(record, state=LOST)
                self._dirty.add(host)
                transitions.append(Transition(host=host, state=LOST, silent_for=silent_for))
        self._store.update_agents(
            {h: (self._agents[h].state, self._agents[h].last_heartbeat) for h in self._dirty}
        )
        self._dirty.clear()
        return transitions

    def agents(self) -> list[AgentRecord]:
        return [self._agents[h] for h in sorted(self._agents)]

    def get(self, host: str) -> AgentRecord | None:
        return self._agents.get(host)

    def awaiting(self) -> dict[str, tuple[str, ...]]:
        """Host -> the checkpoints it last said it awaits a decision for."""
        return {h: a for h, a in self._awaiting.items() if a}
