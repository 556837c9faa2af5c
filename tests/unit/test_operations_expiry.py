"""Finished operations and request ids are forgotten after ``operations_keep_for``; running
operations never are."""

from __future__ import annotations

from google.longrunning import operations_pb2

from coordinator.job_events import JobEvents
from coordinator.operations import Operations
from coordinator.store import OperationRecord, RequestRecord, Store
from crctl.clock import ManualClock

KEEP_FOR = 3600.0


def record(store: Store, name: str, *, done: bool, at: float) -> None:
    operation = operations_pb2.Operation(name=name, done=done)
    store.save_operation(
        OperationRecord(
            name=name,
            kind="checkpoint",
            job="ring",
            done=done,
            operation=operation.SerializeToString(),
            created_at=at,
            finished_at=at if done else None,
        )
    )


def test_old_finished_operations_and_request_ids_expire_running_ones_stay() -> None:
    clock = ManualClock()
    store = Store(":memory:")
    operations = Operations(store, clock, JobEvents(clock), keep_for=KEEP_FOR)
    record(store, "operations/ckpt-old", done=True, at=clock.now())
    record(store, "operations/ckpt-running", done=False, at=clock.now())
    store.record_request(0, "ring", "id-1", RequestRecord("StartCheckpoint:x", b"", clock.now()))
    clock.advance(KEEP_FOR / 2)
    record(store, "operations/ckpt-recent", done=True, at=clock.now())
    operations.expire()
    assert len(store.operations()) == 3, "nothing is old enough yet"
    clock.advance(KEEP_FOR / 2 + 1)
    operations.expire()
    assert sorted(r.name for r in store.operations()) == [
        "operations/ckpt-recent",
        "operations/ckpt-running",
    ]
    assert store.request(0, "ring", "id-1") is None
    clock.advance(KEEP_FOR)
    operations.expire()
    assert [r.name for r in store.operations()] == ["operations/ckpt-running"]
