"""The coordinator's SQLite state: schema upgrades keep what an earlier version recorded, and
the records that decide what is restartable change in single transactions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from coordinator.store import (
    SCHEMA_VERSION,
    CheckpointRecord,
    ImageDrop,
    RankRecord,
    RestartRecord,
    ScheduleRecord,
    Store,
)

# The tables as the first version wrote them (no restarts).
VERSION_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE jobs (job TEXT PRIMARY KEY, state TEXT NOT NULL, created_at REAL NOT NULL,
                   latest_checkpoint TEXT);
CREATE TABLE ranks (job TEXT NOT NULL, rank INTEGER NOT NULL, host TEXT NOT NULL, pid INTEGER,
                    state TEXT NOT NULL, exit_status INTEGER, command TEXT NOT NULL,
                    PRIMARY KEY (job, rank));
CREATE TABLE checkpoints (checkpoint TEXT PRIMARY KEY, job TEXT NOT NULL, request_id TEXT UNIQUE,
    state TEXT NOT NULL, leave_running INTEGER NOT NULL, directory TEXT NOT NULL,
    started_at REAL NOT NULL, finished_at REAL, reason TEXT NOT NULL DEFAULT '',
    failed_host TEXT NOT NULL DEFAULT '', manifest TEXT);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO jobs VALUES ('ring', 'stopped', 1.0, 'ckpt-1');
INSERT INTO checkpoints VALUES ('ckpt-1', 'ring', NULL, 'committed', 0, '/x', 1.0, 2.0, '', '',
                                '{}');
"""


def test_a_database_of_the_first_version_opens_with_its_records_and_the_new_tables(
    tmp_path: Path,
) -> None:
    path = tmp_path / "coordinator.db"
    with sqlite3.connect(path) as db:
        db.executescript(VERSION_1)
    store = Store(path)
    try:
        assert store.job("ring").latest_checkpoint == "ckpt-1"  # type: ignore[union-attr]
        assert store.checkpoint("ckpt-1").state == "committed"  # type: ignore[union-attr]
        assert store.restarts() == []
        version = store._db.execute("SELECT value FROM meta WHERE key='schema_version'")
        assert version.fetchone()[0] == str(SCHEMA_VERSION)
    finally:
        store.close()


def checkpoint(name: str, started: float) -> CheckpointRecord:
    return CheckpointRecord(
        name, "ring", None, "preparing", False, f"/c/{name}", started, None, "", "", None
    )


def test_a_stop_mode_commit_checkpoints_the_ranks_in_the_same_transaction() -> None:
    store = Store(":memory:")
    store.add_rank(RankRecord("ring", 0, "h1", 10, "running", None, ("app",)), 1.0)
    store.begin_checkpoint(checkpoint("ckpt-1", 2.0))
    store.commit_checkpoint("ckpt-1", "ring", "{}", 3.0, ranks_stop=True)
    job = store.job("ring")
    assert job is not None
    assert job.latest_checkpoint == "ckpt-1"
    assert [r.state for r in job.ranks] == ["checkpointed"]
    assert job.state == "stopped"


def test_a_damaged_checkpoint_hands_latest_to_the_newest_good_one_and_back() -> None:
    store = Store(":memory:")
    store.add_rank(RankRecord("ring", 0, "h1", 10, "running", None, ("app",)), 1.0)
    for name, started in (("ckpt-1", 2.0), ("ckpt-2", 4.0)):
        store.begin_checkpoint(checkpoint(name, started))
        store.commit_checkpoint(name, "ring", "{}", started + 1, ranks_stop=False)
    store.mark_damaged("ckpt-2", "rank-0/pages-1.img: size 1, expected 2")
    assert store.job("ring").latest_checkpoint == "ckpt-1"  # type: ignore[union-attr]
    assert store.checkpoint("ckpt-2").state == "damaged"  # type: ignore[union-attr]
    store.mark_damaged("ckpt-1", "missing")
    assert store.job("ring").latest_checkpoint is None  # type: ignore[union-attr]
    store.mark_intact("ckpt-2")
    assert store.job("ring").latest_checkpoint == "ckpt-2"  # type: ignore[union-attr]


def test_a_deleted_checkpoint_leaves_a_drop_for_each_host_holding_its_images() -> None:
    store = Store(":memory:")
    store.add_rank(RankRecord("ring", 0, "h1", 10, "running", None, ("app",)), 1.0)
    for name, started in (("ckpt-1", 2.0), ("ckpt-2", 4.0)):
        store.begin_checkpoint(checkpoint(name, started))
        store.commit_checkpoint(name, "ring", "{}", started + 1, ranks_stop=False)
    store.delete_checkpoint("ckpt-1", images_on=["h2", "h1", "h2"], now=9.0)
    assert store.checkpoint("ckpt-1") is None
    assert store.image_drops() == [
        ImageDrop("h1", "ckpt-1", "ring", "/c/ckpt-1", 9.0),
        ImageDrop("h2", "ckpt-1", "ring", "/c/ckpt-1", 9.0),
    ]
    store.delete_checkpoint("ckpt-1", images_on=["h3"])  # gone already: nothing to drop
    store.image_dropped("h1", "ckpt-1")
    assert [d.host for d in store.image_drops()] == ["h2"]
    assert store.image_drops("h1") == []
    store.delete_checkpoint("ckpt-2")  # a shared store's: nobody to ask
    assert [d.checkpoint for d in store.image_drops()] == ["ckpt-1"]


def test_a_finished_restart_moves_every_rank_with_its_new_pid_at_once() -> None:
    store = Store(":memory:")
    for rank in (0, 1):
        store.add_rank(
            RankRecord("ring", rank, f"h{rank + 1}", 10, "checkpointed", None, ("a",)), 1.0
        )
    store.begin_restart(
        RestartRecord("rst-1", "ring", "ckpt-1", "running", {0: "h3", 1: "h4"}, "", 5.0, None, "")
    )
    store.restart_step_done("rst-1", "unlock")
    assert store.restarts("running")[0].step == "unlock"
    store.finish_restart("rst-1", now=6.0, pids={0: 100, 1: 101})
    job = store.job("ring")
    assert job is not None
    assert [(r.host, r.pid, r.state) for r in job.ranks] == [
        ("h3", 100, "running"),
        ("h4", 101, "running"),
    ]
    assert store.restarts("restarted")[0].restore == "rst-1"
    store.finish_restart("rst-1", now=7.0, reason="again")  # finished: nothing changes
    assert store.restarts("restarted")[0].reason == ""


# The checkpoints table as versions 1 to 3 wrote it (no pins), beside version 3's jobs.
VERSION_3 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE jobs (job TEXT PRIMARY KEY, state TEXT NOT NULL, created_at REAL NOT NULL,
                   latest_checkpoint TEXT, owner_uid INTEGER NOT NULL DEFAULT 0,
                   owner TEXT NOT NULL DEFAULT 'root');
CREATE TABLE ranks (job TEXT NOT NULL, rank INTEGER NOT NULL, host TEXT NOT NULL, pid INTEGER,
                    state TEXT NOT NULL, exit_status INTEGER, command TEXT NOT NULL,
                    PRIMARY KEY (job, rank));
CREATE TABLE checkpoints (checkpoint TEXT PRIMARY KEY, job TEXT NOT NULL, request_id TEXT UNIQUE,
    state TEXT NOT NULL, leave_running INTEGER NOT NULL, directory TEXT NOT NULL,
    started_at REAL NOT NULL, finished_at REAL, reason TEXT NOT NULL DEFAULT '',
    failed_host TEXT NOT NULL DEFAULT '', manifest TEXT);
CREATE TABLE restarts (restore TEXT PRIMARY KEY, job TEXT NOT NULL, checkpoint TEXT NOT NULL,
    state TEXT NOT NULL, placement TEXT NOT NULL, step TEXT NOT NULL DEFAULT '',
    started_at REAL NOT NULL, finished_at REAL, reason TEXT NOT NULL DEFAULT '');
INSERT INTO meta VALUES ('schema_version', '3');
INSERT INTO jobs VALUES ('ring', 'running', 1.0, 'ckpt-1', 1001, 'alice');
INSERT INTO checkpoints VALUES ('ckpt-1', 'ring', NULL, 'committed', 1, '/x', 1.0, 2.0, '', '',
                                '{}');
"""


def test_a_schema_3_database_opens_with_its_checkpoints_unpinned_and_no_schedules(
    tmp_path: Path,
) -> None:
    path = tmp_path / "coordinator.db"
    with sqlite3.connect(path) as db:
        db.executescript(VERSION_3)
    store = Store(path)
    try:
        record = store.checkpoint("ckpt-1")
        assert record is not None and record.state == "committed"
        assert record.pinned is False
        job = store.job("ring")
        assert job is not None and job.owner == "alice" and job.schedule is None
        assert all(a.image_endpoint == "" for a in store.agents())  # schema 5 added it
        assert store.image_drops() == []  # schema 6 added the table
        assert store.schedules() == []
        store.pin_checkpoint("ckpt-1", True)
        store.set_schedule(ScheduleRecord("ring", 60.0, 2, False, next_at=100.0))
    finally:
        store.close()
    reopened = Store(path)  # a database of this version opens again as it is
    try:
        assert reopened.checkpoint("ckpt-1").pinned is True  # type: ignore[union-attr]
        assert [s.job for s in reopened.schedules()] == ["ring"]
        version = reopened._db.execute("SELECT value FROM meta WHERE key='schema_version'")
        assert version.fetchone()[0] == str(SCHEMA_VERSION) == "6"
    finally:
        reopened.close()


def test_a_schedule_round_trips_and_its_rounds_update_it_in_place(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.db"
    store = Store(path)
    store.add_rank(RankRecord("ring", 0, "h1", 10, "running", None, ("app",)), 1.0)
    store.set_schedule(ScheduleRecord("ring", 2.0, 3, True, next_at=12.0))
    store.schedule_next("ring", 14.0)
    store.schedule_outcome("ring", at=13.5, outcome="committed", checkpoint="ckpt-1")
    store.schedule_outcome("ring", at=14.1, outcome="skipped: busy", next_at=16.0)
    store.close()
    store = Store(path)  # durable
    try:
        expected = ScheduleRecord(
            "ring",
            2.0,
            3,
            True,
            next_at=16.0,
            last_at=14.1,
            last_checkpoint="ckpt-1",  # a skip keeps the last checkpoint taken
            last_outcome="skipped: busy",
        )
        assert store.schedule("ring") == expected
        assert store.job("ring").schedule == expected  # type: ignore[union-attr]
        # changed: interval, keep, mode and due time replaced; what the last round did stays
        store.set_schedule(ScheduleRecord("ring", 60.0, 0, False, next_at=74.0))
        changed = store.schedule("ring")
        assert changed is not None
        assert (changed.every_seconds, changed.keep, changed.stop, changed.next_at) == (
            60.0,
            0,
            False,
            74.0,
        )
        assert (changed.last_checkpoint, changed.last_outcome) == ("ckpt-1", "skipped: busy")
        store.remove_schedule("ring")
        assert store.schedule("ring") is None and store.schedules() == []
        store.schedule_outcome("ring", at=80.0, outcome="committed")  # off: nothing to update
        assert store.schedule("ring") is None
    finally:
        store.close()


def test_a_pin_is_stored_with_the_checkpoint_and_listed() -> None:
    store = Store(":memory:")
    store.add_rank(RankRecord("ring", 0, "h1", 10, "running", None, ("app",)), 1.0)
    store.begin_checkpoint(checkpoint("ckpt-1", 2.0))
    store.pin_checkpoint("ckpt-1", True)
    assert [c.pinned for c in store.checkpoints("ring", manifests=False)] == [True]
    store.pin_checkpoint("ckpt-1", False)
    assert store.checkpoint("ckpt-1").pinned is False  # type: ignore[union-attr]
