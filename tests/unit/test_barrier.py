"""The two-phase checkpoint barrier, tested as a pure state machine: every transition, no I/O."""

from __future__ import annotations

import pytest

from coordinator.barrier import (
    Abandon,
    AgentLost,
    ArmTimer,
    Cancel,
    CheckpointBarrier,
    CommitAck,
    Finished,
    Phase,
    Ready,
    RecordAbort,
    RecordCommit,
    SendAbort,
    SendCommit,
    SendFreeze,
    SendPrepare,
    Start,
    Tick,
    Vote,
)

HOSTS = ("h1", "h2", "h3")


def started(
    prepare: float = 10.0, commit: float = 5.0, record_before_release: bool = True
) -> CheckpointBarrier:
    barrier = CheckpointBarrier(
        HOSTS,
        prepare_timeout=prepare,
        commit_timeout=commit,
        record_before_release=record_before_release,
    )
    barrier.handle(Start(now=100.0))
    for host in HOSTS:
        barrier.handle(Ready(host))
    return barrier


def all_yes(barrier: CheckpointBarrier) -> list[object]:
    actions: list[object] = []
    for host in HOSTS:
        actions += barrier.handle(Vote(host, yes=True))
    return actions


def readying() -> CheckpointBarrier:
    barrier = CheckpointBarrier(HOSTS, prepare_timeout=10, commit_timeout=5)
    barrier.handle(Start(now=100.0))
    return barrier


def test_start_sends_prepare_to_every_host_with_the_prepare_deadline() -> None:
    barrier = CheckpointBarrier(HOSTS, prepare_timeout=10, commit_timeout=5)
    actions = barrier.handle(Start(now=100.0))
    assert actions == [SendPrepare(HOSTS, 110.0), ArmTimer(110.0)]
    assert barrier.phase is Phase.READYING


def test_every_host_is_told_to_freeze_at_once_when_the_last_is_ready() -> None:
    barrier = readying()
    assert barrier.handle(Ready("h1")) == []
    assert barrier.handle(Ready("h1")) == []  # a repeat counts once
    assert barrier.handle(Ready("h9")) == []  # not a host of this checkpoint
    assert barrier.handle(Ready("h2")) == []
    assert barrier.phase is Phase.READYING
    # The freeze keeps the prepare deadline: one deadline covers readying and dumping.
    assert barrier.handle(Ready("h3")) == [SendFreeze(HOSTS, 110.0)]
    assert barrier.phase is Phase.PREPARING
    assert barrier.handle(Ready("h3")) == []


def test_a_no_vote_while_readying_aborts_before_anyone_freezes() -> None:
    barrier = readying()
    barrier.handle(Ready("h1"))
    actions = barrier.handle(Vote("h2", yes=False, reason="criu: no such process"))
    reason = "h2 voted no: criu: no such process"
    assert actions == [
        RecordAbort(reason, "h2"),
        SendAbort(HOSTS, reason),
        Finished(Phase.ABORTED, reason),
    ]
    assert barrier.handle(Ready("h3")) == []


def test_a_yes_vote_before_the_freeze_is_not_counted() -> None:
    barrier = readying()
    assert barrier.handle(Vote("h1", yes=True)) == []
    for host in HOSTS:
        barrier.handle(Ready(host))
    assert barrier.votes == {}


def test_an_agent_lost_while_readying_aborts() -> None:
    barrier = readying()
    actions = barrier.handle(AgentLost("h3"))
    assert actions[0] == RecordAbort("agent h3 lost during prepare", "h3")
    assert barrier.phase is Phase.ABORTED


def test_the_deadline_while_readying_names_the_hosts_that_did_not_start_criu() -> None:
    barrier = readying()
    barrier.handle(Ready("h2"))
    assert barrier.handle(Tick(now=109.9)) == []
    actions = barrier.handle(Tick(now=110.0))
    reason = "prepare deadline passed; CRIU not started on h1, h3"
    assert actions[0] == RecordAbort(reason, "h1")
    assert barrier.phase is Phase.ABORTED


def test_cancel_while_readying_aborts() -> None:
    barrier = readying()
    actions = barrier.handle(Cancel("coordinator error"))
    assert actions[-1] == Finished(Phase.ABORTED, "cancelled: coordinator error")


def test_commit_is_recorded_before_any_agent_is_told_once_all_voted_yes() -> None:
    barrier = started()
    assert barrier.handle(Vote("h1", yes=True)) == []
    assert barrier.handle(Vote("h2", yes=True)) == []
    actions = barrier.handle(Vote("h3", yes=True))
    assert actions == [RecordCommit(), SendCommit(HOSTS, 115.0), ArmTimer(115.0)]
    assert barrier.phase is Phase.COMMITTING


def test_all_acknowledgements_finish_the_commit() -> None:
    barrier = started()
    all_yes(barrier)
    assert barrier.handle(CommitAck("h1", ok=True)) == []
    assert barrier.handle(CommitAck("h2", ok=True)) == []
    assert barrier.handle(CommitAck("h3", ok=True)) == [Finished(Phase.COMMITTED, "")]
    assert barrier.phase is Phase.COMMITTED


def test_a_no_vote_aborts_everyone_with_the_reason() -> None:
    barrier = started()
    barrier.handle(Vote("h1", yes=True))
    actions = barrier.handle(Vote("h2", yes=False, reason="criu: cannot dump"))
    reason = "h2 voted no: criu: cannot dump"
    assert actions == [
        RecordAbort(reason, "h2"),
        SendAbort(HOSTS, reason),
        Finished(Phase.ABORTED, reason),
    ]
    assert barrier.failed_host == "h2"


def test_an_agent_lost_during_prepare_aborts() -> None:
    barrier = started()
    actions = barrier.handle(AgentLost("h3"))
    assert isinstance(actions[0], RecordAbort)
    assert actions[0].failed_host == "h3"
    assert barrier.phase is Phase.ABORTED


def test_the_prepare_deadline_aborts_naming_the_silent_hosts() -> None:
    barrier = started(prepare=10)
    barrier.handle(Vote("h1", yes=True))
    assert barrier.handle(Tick(now=109.9)) == []
    actions = barrier.handle(Tick(now=110.0))
    assert actions[0] == RecordAbort("prepare deadline passed; no vote from h2, h3", "h2")
    assert barrier.phase is Phase.ABORTED


def test_cancel_during_prepare_aborts() -> None:
    barrier = started()
    actions = barrier.handle(Cancel("client went away"))
    assert actions[-1] == Finished(Phase.ABORTED, "cancelled: client went away")


def test_after_the_decision_to_commit_nothing_can_abort() -> None:
    barrier = started()
    all_yes(barrier)
    assert barrier.handle(Cancel("too late")) == []
    assert barrier.handle(Vote("h1", yes=False)) == []
    assert barrier.phase is Phase.COMMITTING


def test_abandoning_a_recorded_commit_keeps_it_and_names_who_did_not_acknowledge() -> None:
    barrier = started()
    all_yes(barrier)
    barrier.handle(CommitAck("h1", ok=True))
    actions = barrier.handle(Abandon("coordinator error", recorded=True))
    assert actions == [Finished(Phase.COMMITTED, "committed; coordinator error", ("h2", "h3"))]


def test_abandoning_a_release_first_checkpoint_before_its_record_aborts_it() -> None:
    barrier = started(record_before_release=False)
    all_yes(barrier)
    actions = barrier.handle(Abandon("coordinator error", recorded=False))
    assert actions[0] == RecordAbort("coordinator error", None)
    assert actions[1] == SendAbort(HOSTS, "coordinator error")
    assert barrier.phase is Phase.ABORTED


def test_abandoning_during_prepare_aborts() -> None:
    barrier = started()
    assert barrier.handle(Abandon("bug", recorded=False))[-1] == Finished(Phase.ABORTED, "bug")


def test_a_commit_whose_record_failed_is_aborted() -> None:
    barrier = started()
    all_yes(barrier)  # RecordCommit was asked for, and it failed
    actions = barrier.handle(Abandon("disk full", recorded=False))
    assert actions[0] == RecordAbort("disk full", None)
    assert barrier.phase is Phase.ABORTED


def test_an_agent_lost_during_commit_is_reported_but_the_commit_stands() -> None:
    barrier = started()
    all_yes(barrier)
    barrier.handle(CommitAck("h1", ok=True))
    barrier.handle(CommitAck("h2", ok=True))
    actions = barrier.handle(AgentLost("h3"))
    assert actions == [Finished(Phase.COMMITTED, "committed; commit failed on h3", ("h3",))]


def test_the_commit_deadline_finishes_with_the_unacknowledged_hosts() -> None:
    barrier = started(prepare=10, commit=5)
    all_yes(barrier)
    barrier.handle(CommitAck("h1", ok=True))
    assert barrier.handle(Tick(now=114.0)) == []
    actions = barrier.handle(Tick(now=115.0))
    assert actions == [
        Finished(Phase.COMMITTED, "committed; commit deadline passed on h2, h3", ("h2", "h3"))
    ]


def test_votes_from_unknown_hosts_and_repeated_votes_are_ignored() -> None:
    barrier = started()
    assert barrier.handle(Vote("h9", yes=False)) == []
    barrier.handle(Vote("h1", yes=True))
    assert barrier.handle(Vote("h1", yes=False)) == []  # the first vote counts
    assert barrier.phase is Phase.PREPARING


def test_a_finished_barrier_ignores_every_event() -> None:
    barrier = started()
    barrier.handle(Vote("h1", yes=False))
    for event in (
        Vote("h2", yes=True),
        AgentLost("h2"),
        Tick(now=1e9),
        Cancel("x"),
        CommitAck("h1", ok=True),
        Start(now=0),
    ):
        assert barrier.handle(event) == []
    assert barrier.phase is Phase.ABORTED


def test_events_before_start_do_nothing_except_cancel() -> None:
    barrier = CheckpointBarrier(HOSTS, prepare_timeout=10, commit_timeout=5)
    assert barrier.handle(Vote("h1", yes=True)) == []
    assert barrier.handle(Tick(now=1e9)) == []
    assert barrier.handle(CommitAck("h1", ok=True)) == []
    assert barrier.handle(Cancel("no"))[-1] == Finished(Phase.ABORTED, "cancelled: no")


def test_lost_agents_outside_the_checkpoint_do_not_matter() -> None:
    barrier = started()
    assert barrier.handle(AgentLost("h9")) == []
    assert barrier.phase is Phase.PREPARING


@pytest.mark.parametrize("hosts", [(), ("h1", "h1")])
def test_hosts_must_be_a_non_empty_set(hosts: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        CheckpointBarrier(hosts, prepare_timeout=1, commit_timeout=1)


def test_release_first_sends_commit_without_recording_until_every_host_acknowledged() -> None:
    barrier = started(record_before_release=False)
    actions = all_yes(barrier)
    assert actions == [SendCommit(HOSTS, 115.0), ArmTimer(115.0)]
    assert barrier.handle(CommitAck("h1", ok=True)) == []
    assert barrier.handle(CommitAck("h2", ok=True)) == []
    assert barrier.handle(CommitAck("h3", ok=True)) == [
        RecordCommit(),
        Finished(Phase.COMMITTED, ""),
    ]


def test_release_first_aborts_when_a_host_cannot_seal_its_images() -> None:
    barrier = started(record_before_release=False)
    all_yes(barrier)
    barrier.handle(CommitAck("h1", ok=True))
    barrier.handle(CommitAck("h2", ok=False, reason="disk full"))
    actions = barrier.handle(AgentLost("h3"))
    reason = "commit failed on h2, h3; the ranks run on"
    assert actions == [
        RecordAbort(reason, "h2"),
        SendAbort(("h2", "h3"), reason),
        Finished(Phase.ABORTED, reason),
    ]
    assert barrier.phase is Phase.ABORTED


def test_release_first_commit_deadline_aborts_naming_the_silent_host() -> None:
    barrier = started(prepare=10, commit=5, record_before_release=False)
    all_yes(barrier)
    barrier.handle(CommitAck("h1", ok=True))
    barrier.handle(CommitAck("h3", ok=True))
    actions = barrier.handle(Tick(now=115.0))
    assert actions[0] == RecordAbort("commit deadline passed on h2; the ranks run on", "h2")
