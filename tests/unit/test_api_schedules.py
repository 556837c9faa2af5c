"""SetSchedule and PinCheckpoint through the real gRPC API (the real servicer and server, the
real client), over the real scheduler, jobs and checkpoint services on a store in memory: a
schedule set shows in GetJob and ListJobs and goes with every_seconds 0; a pin shows in the
checkpoint's info; unknown jobs and checkpoints are NOT_FOUND, absurd values INVALID_ARGUMENT,
another user's job PERMISSION_DENIED; both calls are audited as mutating."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from structlog.testing import capture_logs

from cli.client import CoordinatorClient
from coordinator.checkpoints import CheckpointService, CheckpointSettings
from coordinator.idempotency import RequestLedger
from coordinator.job_events import JobEvents
from coordinator.jobs import JobService
from coordinator.registry import AgentRegistry
from coordinator.schedules import Scheduler
from coordinator.storage import CheckpointStore
from coordinator.store import CheckpointRecord, RankRecord, Store
from crctl.clock import ManualClock
from crctl.errors import ConfigError, ConflictError, CrctlError, NotFoundError
from tests.unit.api_harness import call_api, serve_api
from tests.unit.test_api_identity import as_nobody

JOB = "ring"


def domain(root: Path) -> Any:
    """Root's job ``ring`` with one running rank and one committed checkpoint ``ckpt-1``."""
    clock = ManualClock()
    store = Store(":memory:")
    registry = AgentRegistry(store, clock, lost_after=5)
    jobs = JobService(store, registry, None, clock, JobEvents(clock))  # type: ignore[arg-type]
    checkpoints = CheckpointService(
        store=store,
        jobs=jobs,
        plane=None,  # type: ignore[arg-type]
        files=CheckpointStore(root / "checkpoints"),
        clock=clock,
        settings=CheckpointSettings(prepare_timeout=10, commit_timeout=5, retain=3),
    )
    scheduler = Scheduler(
        store=store,
        jobs=jobs,
        events=JobEvents(clock),
        clock=clock,
        start_checkpoint=lambda *a, **kw: None,  # type: ignore[arg-type,return-value]
    )
    store.add_rank(RankRecord(JOB, 0, "h1", 10, "running", None, ("app",)), clock.now())
    store.begin_checkpoint(
        CheckpointRecord("ckpt-1", JOB, None, "preparing", True, "/c", 1.0, None, "", "", None)
    )
    store.commit_checkpoint("ckpt-1", JOB, "{}", 2.0, ranks_stop=False)
    return SimpleNamespace(
        jobs=jobs,
        checkpoints=checkpoints,
        schedules=scheduler,
        agents=list,
        awaiting_decision=lambda job: [],
        clock=clock,
        ledger=RequestLedger(store, clock),
    )


def test_a_schedule_set_shows_in_the_job_and_switched_off_goes(tmp_path: Path) -> None:
    service = domain(tmp_path)

    def calls(address: str) -> tuple[Any, ...]:
        with CoordinatorClient(address) as client:
            set_ = client.set_schedule(JOB, every=90.0, keep=2, stop=True, request_id="r1")
            job, listed = client.job(JOB), client.jobs()
            off = client.set_schedule(JOB, every=0.0, request_id="r2")
            return set_, job, listed, off, client.job(JOB)

    with capture_logs() as logs:
        set_, job, listed, off, after = call_api(service, calls)
    assert (set_.job, set_.every_seconds, set_.keep, set_.stop) == (JOB, 90.0, 2, True)
    assert set_.next_at.ToNanoseconds() == int((service.clock.now() + 90.0) * 1e9)
    assert job.schedule == set_
    assert listed[0].schedule == set_
    assert off.every_seconds == 0
    assert not after.HasField("schedule")
    audits = [(e["action"], e["allowed"]) for e in logs if e["event"] == "audit"]
    assert audits == [("schedule checkpoints of", True)] * 2


def test_a_pin_shows_in_the_checkpoints_info_and_list(tmp_path: Path) -> None:
    service = domain(tmp_path)

    def calls(address: str) -> tuple[Any, ...]:
        with CoordinatorClient(address) as client:
            pinned = client.pin_checkpoint(JOB, "ckpt-1")
            listed = client.checkpoints(JOB)
            unpinned = client.pin_checkpoint(JOB, "ckpt-1", pinned=False)
            return pinned, listed, unpinned

    with capture_logs() as logs:
        pinned, listed, unpinned = call_api(service, calls)
    assert (pinned.checkpoint, pinned.pinned, pinned.latest) == ("ckpt-1", True, True)
    assert [c.pinned for c in listed] == [True]
    assert unpinned.pinned is False
    audits = [(e["action"], e["allowed"]) for e in logs if e["event"] == "audit"]
    assert audits == [("pin checkpoints of", True)] * 2


def _refused(tmp_path: Path, call: Any) -> CrctlError:
    def attempt(address: str) -> CrctlError:
        with CoordinatorClient(address) as client:
            try:
                call(client)
            except CrctlError as raised:
                return raised
        raise AssertionError("the call succeeded")

    return call_api(domain(tmp_path), attempt)


@pytest.mark.parametrize(
    ("call", "kind", "message"),
    [
        (lambda c: c.set_schedule("nope", every=60.0), NotFoundError, "unknown job 'nope'"),
        (lambda c: c.pin_checkpoint("nope", "ckpt-1"), NotFoundError, "unknown job 'nope'"),
        (
            lambda c: c.pin_checkpoint(JOB, "ckpt-9"),
            NotFoundError,
            "job ring has no checkpoint ckpt-9",
        ),
        (
            lambda c: c.set_schedule(JOB, every=0.5),
            ConfigError,
            "every_seconds 0.5 is out of range: give 1 to 31622400 seconds, or 0 to switch",
        ),
        (lambda c: c.set_schedule(JOB, every=-1.0), ConfigError, "every_seconds -1.0 is out"),
        (lambda c: c.set_schedule(JOB, every=float("nan")), ConfigError, "every_seconds nan"),
        (lambda c: c.set_schedule(JOB, every=1e12), ConfigError, "out of range"),
        (lambda c: c.set_schedule(JOB, every=60.0, keep=5000), ConfigError, "keep 5000 is out"),
        (lambda c: c.set_schedule("bad name", every=60.0), ConfigError, "bad job name"),
        (lambda c: c.pin_checkpoint(JOB, ""), ConfigError, "bad checkpoint id ''"),
    ],
)
def test_unknown_and_absurd_requests_are_refused_with_their_kind(
    tmp_path: Path, call: Any, kind: type[CrctlError], message: str
) -> None:
    raised = _refused(tmp_path, call)
    assert type(raised) is kind
    assert message in str(raised)


def test_pinning_an_aborted_checkpoint_is_a_conflict(tmp_path: Path) -> None:
    service = domain(tmp_path)
    store = service.checkpoints._store
    store.begin_checkpoint(
        CheckpointRecord("ckpt-2", JOB, None, "preparing", True, "/c", 3.0, None, "", "", None)
    )
    store.abort_checkpoint("ckpt-2", "deadline", "h1", 4.0)

    def attempt(address: str) -> CrctlError:
        with CoordinatorClient(address) as client:
            try:
                client.pin_checkpoint(JOB, "ckpt-2")
            except CrctlError as raised:
                return raised
        raise AssertionError("the pin succeeded")

    raised = call_api(service, attempt)
    assert type(raised) is ConflictError
    assert "ckpt-2 is aborted, not committed" in str(raised)


ANOTHER_USER = """
import sys, grpc
from crctl.v1 import coordinator_pb2 as pb, coordinator_pb2_grpc as rpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    stub = rpc.CoordinatorStub(channel)
    for call, request in (
        (stub.SetSchedule, pb.SetScheduleRequest(job="ring", every_seconds=60)),
        (stub.PinCheckpoint, pb.PinCheckpointRequest(job="ring", checkpoint="ckpt-1", pinned=True)),
    ):
        try:
            call(request, timeout=10)
            print("ALLOWED")
        except grpc.RpcError as exc:
            print(exc.code().name)
"""


def test_another_users_job_is_refused_and_the_refusal_audited(tmp_path: Path) -> None:
    service = domain(tmp_path)
    with capture_logs() as logs:
        answers = serve_api(
            service, lambda s: as_nobody(sys.executable, "-c", ANOTHER_USER, s.unix)
        )
    assert answers.split() == ["PERMISSION_DENIED", "PERMISSION_DENIED"]
    audits = [(e["caller"], e["action"], e["allowed"]) for e in logs if e["event"] == "audit"]
    assert audits == [
        ("nobody", "schedule checkpoints of", False),
        ("nobody", "pin checkpoints of", False),
    ]
    assert service.schedules.get(JOB) is None
    assert service.checkpoints._store.checkpoint("ckpt-1").pinned is False
