"""The two-phase checkpoint barrier as a pure state machine: events in, actions out.

No sockets, no clocks, no CRIU: the service layer feeds it events (the start, each vote, a lost
agent, a deadline passing, a cancel, each commit acknowledgement) and carries out the actions it
returns (send prepare / commit / abort, record the outcome, arm a timer).

Phases and deadlines::

    READYING --all ready--> PREPARING --all voted yes--> COMMITTING --all acknowledged--> COMMITTED
        |                       |                            |
        +-----------------------+--no vote / lost / deadline / cancel--> ABORTED

Prepare runs in two steps under one deadline. *Readying*: every agent starts CRIU for its ranks,
which waits before touching them (its start-up costs the application nothing). *Freezing*: once
every host is ready, all hosts are told at once to freeze, dump and hold their ranks, and vote.
So the ranks of all hosts stop at the same moment instead of each when its own CRIU happens to
be ready, and no host's ranks stand frozen while another host is still starting CRIU.

Two orders of recording, chosen per checkpoint:

* ``record_before_release`` (the ranks stop after the checkpoint): the votes carry the complete
  manifest and the checkpoint is recorded durably *before* any agent is told to commit (which
  kills the ranks), so a coordinator that dies after deciding never loses the job. Hosts that
  fail to acknowledge are reported; the recorded checkpoint stands.
* release first (``--leave-running``): agents release the ranks as soon as all are held, then
  checksum their images and send the manifest with their acknowledgement; the checkpoint is
  recorded when every host has acknowledged. If one does not, the checkpoint is aborted (the
  ranks already run on) and the previous one stays the latest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Phase(Enum):
    IDLE = "idle"
    READYING = "readying"
    PREPARING = "preparing"
    COMMITTING = "committing"
    COMMITTED = "committed"
    ABORTED = "aborted"

    @property
    def finished(self) -> bool:
        return self in (Phase.COMMITTED, Phase.ABORTED)


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    now: float


@dataclass(frozen=True)
class Ready:
    host: str


@dataclass(frozen=True)
class Vote:
    host: str
    yes: bool
    reason: str = ""


@dataclass(frozen=True)
class AgentLost:
    host: str


@dataclass(frozen=True)
class Tick:
    """Time has passed; the barrier checks its current phase's deadline."""

    now: float


@dataclass(frozen=True)
class Cancel:
    reason: str


@dataclass(frozen=True)
class Abandon:
    """The coordinator cannot go on with this checkpoint (a bug, an I/O failure): end it now,
    whatever the phase. A commit that was recorded stands (its hosts hear it when they ask);
    anything else is aborted."""

    reason: str
    recorded: bool  # whether RecordCommit was carried out


@dataclass(frozen=True)
class CommitAck:
    host: str
    ok: bool
    reason: str = ""


Event = Start | Ready | Vote | AgentLost | Tick | Cancel | Abandon | CommitAck


# --- actions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendPrepare:
    hosts: tuple[str, ...]
    deadline: float


@dataclass(frozen=True)
class SendFreeze:
    hosts: tuple[str, ...]
    deadline: float


@dataclass(frozen=True)
class RecordCommit:
    """Make the checkpoint the job's latest, durably, before anyone is told to commit."""


@dataclass(frozen=True)
class SendCommit:
    hosts: tuple[str, ...]
    deadline: float


@dataclass(frozen=True)
class SendAbort:
    hosts: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class RecordAbort:
    reason: str
    failed_host: str | None


@dataclass(frozen=True)
class ArmTimer:
    deadline: float


@dataclass(frozen=True)
class Finished:
    phase: Phase
    reason: str
    unacknowledged: tuple[str, ...] = ()


Action = (
    SendPrepare
    | SendFreeze
    | RecordCommit
    | SendCommit
    | SendAbort
    | RecordAbort
    | ArmTimer
    | Finished
)


_PREPARE_PHASES = (Phase.READYING, Phase.PREPARING)


@dataclass
class CheckpointBarrier:
    hosts: tuple[str, ...]
    prepare_timeout: float
    commit_timeout: float
    record_before_release: bool = True
    phase: Phase = Phase.IDLE
    deadline: float = 0.0
    ready: set[str] = field(default_factory=set)
    votes: dict[str, bool] = field(default_factory=dict)
    acks: dict[str, bool] = field(default_factory=dict)
    reason: str = ""
    failed_host: str | None = None
    # "Is this one of ours?" is asked at every event: a tuple's `in` walks it (a round of N
    # hosts would cost N^2).
    _members: frozenset[str] = field(init=False, repr=False, default=frozenset())

    def __post_init__(self) -> None:
        if not self.hosts:
            raise ValueError("a checkpoint needs at least one host")
        self._members = frozenset(self.hosts)
        if len(self._members) != len(self.hosts):
            raise ValueError("hosts must be distinct")

    def handle(self, event: Event) -> list[Action]:
        """Apply one event; return the actions to carry out, in order."""
        if self.phase.finished:
            return []
        match event:
            case Start(now=now) if self.phase is Phase.IDLE:
                self.phase = Phase.READYING
                self.deadline = now + self.prepare_timeout
                return [SendPrepare(self.hosts, self.deadline), ArmTimer(self.deadline)]
            case Ready(host=host) if self.phase is Phase.READYING and host in self._members:
                self.ready.add(host)
                if len(self.ready) < len(self.hosts):
                    return []
                self.phase = Phase.PREPARING
                return [SendFreeze(self.hosts, self.deadline)]
            case Vote(host=host, yes=False, reason=reason) if self.phase in _PREPARE_PHASES:
                if host not in self._members or host in self.votes:
                    return []
                self.votes[host] = False
                return self._abort(f"{host} voted no: {reason}", host)
            case Vote(host=host, yes=True) if self.phase is Phase.PREPARING:
                if host not in self._members or host in self.votes:
                    return []
                self.votes[host] = True
                if len(self.votes) == len(self.hosts):
                    return self._commit()
                return []
            case AgentLost(host=host) if host in self._members:
                if self.phase in _PREPARE_PHASES:
                    return self._abort(f"agent {host} lost during prepare", host)
                if self.phase is Phase.COMMITTING and host not in self.acks:
                    self.acks[host] = False
                    return self._maybe_finish_commit()
                return []
            case Tick(now=now) if self.phase is not Phase.IDLE and now >= self.deadline:
                if self.phase is Phase.READYING:
                    missing = [h for h in self.hosts if h not in self.ready]
                    return self._abort(
                        f"prepare deadline passed; CRIU not started on {', '.join(missing)}",
                        missing[0] if missing else None,
                    )
                if self.phase is Phase.PREPARING:
                    missing = [h for h in self.hosts if h not in self.votes]
                    return self._abort(
                        f"prepare deadline passed; no vote from {', '.join(missing)}",
                        missing[0] if missing else None,
                    )
                return self._finish_commit(timed_out=True)
            case Cancel(reason=reason) if self.phase in (Phase.IDLE, *_PREPARE_PHASES):
                return self._abort(f"cancelled: {reason}", None)
            case Abandon(reason=reason, recorded=recorded):
                if self.phase is Phase.COMMITTING and recorded:
                    unacknowledged = tuple(h for h in self.hosts if not self.acks.get(h, False))
                    self.phase = Phase.COMMITTED
                    self.reason = f"committed; {reason}"
                    return [Finished(Phase.COMMITTED, self.reason, unacknowledged)]
                return self._abort(reason, None)
            case CommitAck(host=host, ok=ok) if self.phase is Phase.COMMITTING:
                if host in self._members and host not in self.acks:
                    self.acks[host] = ok
                    return self._maybe_finish_commit()
                return []
        return []

    # --- transitions ---

    def _abort(self, reason: str, failed_host: str | None) -> list[Action]:
        self.phase = Phase.ABORTED
        self.reason = reason
        self.failed_host = failed_host
        return [
            RecordAbort(reason, failed_host),
            SendAbort(self.hosts, reason),
            Finished(Phase.ABORTED, reason),
        ]

    def _commit(self) -> list[Action]:
        self.phase = Phase.COMMITTING
        self.deadline = self.deadline + self.commit_timeout
        release: list[Action] = [SendCommit(self.hosts, self.deadline), ArmTimer(self.deadline)]
        return [RecordCommit(), *release] if self.record_before_release else release

    def _maybe_finish_commit(self) -> list[Action]:
        if len(self.acks) < len(self.hosts):
            return []
        return self._finish_commit(timed_out=False)

    def _finish_commit(self, *, timed_out: bool) -> list[Action]:
        unacknowledged = tuple(h for h in self.hosts if not self.acks.get(h, False))
        why = "commit deadline passed" if timed_out else "commit failed"
        if self.record_before_release:
            self.phase = Phase.COMMITTED
            if unacknowledged:
                self.reason = f"committed; {why} on {', '.join(unacknowledged)}"
            return [Finished(Phase.COMMITTED, self.reason, unacknowledged)]
        if unacknowledged:
            self.phase = Phase.ABORTED
            self.failed_host = unacknowledged[0]
            self.reason = f"{why} on {', '.join(unacknowledged)}; the ranks run on"
            return [
                RecordAbort(self.reason, self.failed_host),
                SendAbort(unacknowledged, self.reason),
                Finished(Phase.ABORTED, self.reason),
            ]
        self.phase = Phase.COMMITTED
        return [RecordCommit(), Finished(Phase.COMMITTED, "")]
