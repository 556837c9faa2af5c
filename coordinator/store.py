"""The coordinator's durable state in SQLite: agents, jobs, ranks, checkpoints, restarts,
schedules.

Writes are transactional and fsync'd (WAL, synchronous=FULL), so a coordinator killed with
SIGKILL and started again knows everything it had acknowledged."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from crctl.errors import ConfigError

# 2: restarts; 3: job owners; 4: schedules, pins; 5: image servers; 6: image drops
SCHEMA_VERSION = 6

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS agents (
    host TEXT PRIMARY KEY,
    addresses TEXT NOT NULL,          -- JSON list
    criu_version TEXT NOT NULL,
    capabilities TEXT NOT NULL,       -- JSON list
    agent_version TEXT NOT NULL,
    pid INTEGER NOT NULL,
    state TEXT NOT NULL,              -- alive | lost
    registered_at REAL NOT NULL,
    last_heartbeat REAL NOT NULL,
    image_endpoint TEXT NOT NULL DEFAULT '',  -- where it serves the images it holds
    image_server_key TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS jobs (
    job TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    latest_checkpoint TEXT,
    owner_uid INTEGER NOT NULL DEFAULT 0,  -- who launched it; its ranks run as this user
    owner TEXT NOT NULL DEFAULT 'root'
);
CREATE TABLE IF NOT EXISTS ranks (
    job TEXT NOT NULL REFERENCES jobs(job),
    rank INTEGER NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER,
    state TEXT NOT NULL,
    exit_status INTEGER,
    command TEXT NOT NULL,            -- JSON list
    PRIMARY KEY (job, rank)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    checkpoint TEXT PRIMARY KEY,
    job TEXT NOT NULL REFERENCES jobs(job),
    request_id TEXT UNIQUE,
    state TEXT NOT NULL,              -- preparing | committed | aborted | damaged
    leave_running INTEGER NOT NULL,
    directory TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    reason TEXT NOT NULL DEFAULT '',
    failed_host TEXT NOT NULL DEFAULT '',
    manifest TEXT,                    -- the manifest (JSON), also written last to directory
    pinned INTEGER NOT NULL DEFAULT 0 -- never removed by retention
);
CREATE TABLE IF NOT EXISTS restarts (
    restore TEXT PRIMARY KEY,
    job TEXT NOT NULL REFERENCES jobs(job),
    checkpoint TEXT NOT NULL,
    state TEXT NOT NULL,              -- running | restarted | aborted
    placement TEXT NOT NULL,          -- JSON {rank: target host}
    step TEXT NOT NULL DEFAULT '',    -- the last step every target host completed
    started_at REAL NOT NULL,
    finished_at REAL,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS operations (
    name TEXT PRIMARY KEY,            -- operations/<checkpoint or restore id>
    kind TEXT NOT NULL,               -- checkpoint | restart
    job TEXT NOT NULL,
    done INTEGER NOT NULL,
    operation BLOB NOT NULL,          -- the google.longrunning.Operation, serialized
    created_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS operations_by_job ON operations(job, created_at);
CREATE TABLE IF NOT EXISTS requests (
    caller_uid INTEGER NOT NULL,      -- request ids are scoped to the caller and the job
    job TEXT NOT NULL,
    request_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,        -- the method and a digest of the rest of the request
    response BLOB NOT NULL,           -- the first call's answer, serialized
    created_at REAL NOT NULL,
    PRIMARY KEY (caller_uid, job, request_id)
);
CREATE TABLE IF NOT EXISTS schedules (
    job TEXT PRIMARY KEY REFERENCES jobs(job),
    every_seconds REAL NOT NULL,
    keep INTEGER NOT NULL,            -- the job's retention; 0: the coordinator's
    stop INTEGER NOT NULL,            -- its checkpoints stop the job
    next_at REAL NOT NULL,            -- when the next one is due (wall clock)
    last_at REAL,                     -- when the last round ended (taken or skipped)
    last_checkpoint TEXT NOT NULL DEFAULT '',
    last_outcome TEXT NOT NULL DEFAULT ''  -- committed | aborted: why | skipped: why
);
CREATE TABLE IF NOT EXISTS image_drops (  -- a retired checkpoint's images a host still holds
    host TEXT NOT NULL,
    checkpoint TEXT NOT NULL,         -- its record is gone: retention deleted it
    job TEXT NOT NULL,
    directory TEXT NOT NULL,
    retired_at REAL NOT NULL,
    PRIMARY KEY (host, checkpoint)
);
"""


@dataclass(frozen=True)
class AgentRecord:
    host: str
    addresses: tuple[str, ...]
    criu_version: str
    capabilities: tuple[str, ...]
    agent_version: str
    pid: int
    state: str
    registered_at: float
    last_heartbeat: float
    image_endpoint: str = ""  # where it serves the checkpoint images it holds ("": none)
    image_server_key: str = ""  # that server's CurveZMQ public key, z85


@dataclass(frozen=True)
class RankRecord:
    job: str
    rank: int
    host: str
    pid: int
    state: str  # running | exited | killed | checkpointed | failed
    exit_status: int | None
    argv: tuple[str, ...]


@dataclass(frozen=True)
class JobRecord:
    job: str
    state: str  # running | stopped
    created_at: float
    latest_checkpoint: str | None
    ranks: tuple[RankRecord, ...]
    owner_uid: int = 0
    owner: str = "root"
    schedule: ScheduleRecord | None = None


@dataclass(frozen=True)
class ImageDrop:
    """Images of a retired checkpoint on a host that has not yet said it removed them."""

    host: str
    checkpoint: str
    job: str
    directory: str
    retired_at: float


@dataclass(frozen=True)
class CheckpointRecord:
    checkpoint: str
    job: str
    request_id: str | None
    state: str  # preparing | committed | aborted | damaged
    leave_running: bool
    directory: str
    started_at: float
    finished_at: float | None
    reason: str
    failed_host: str
    manifest: str | None
    pinned: bool = False


@dataclass(frozen=True)
class ScheduleRecord:
    job: str
    every_seconds: float
    keep: int  # the job's retention; 0: the coordinator's
    stop: bool  # stop-mode checkpoints (default: leave the job running)
    next_at: float
    last_at: float | None = None
    last_checkpoint: str = ""
    last_outcome: str = ""  # committed | aborted: <reason> | skipped: <reason>


@dataclass(frozen=True)
class OperationRecord:
    name: str
    kind: str  # checkpoint | restart
    job: str
    done: bool
    operation: bytes  # a serialized google.longrunning.Operation
    created_at: float
    finished_at: float | None


@dataclass(frozen=True)
class RequestRecord:
    fingerprint: str
    response: bytes
    created_at: float


@dataclass(frozen=True)
class RestartRecord:
    restore: str
    job: str
    checkpoint: str
    state: str  # running | restarted | aborted
    placement: dict[int, str]  # rank -> target host
    step: str  # the last step every target host completed ('' before the first)
    started_at: float
    finished_at: float | None
    reason: str

    @property
    def hosts(self) -> list[str]:
        return sorted(set(self.placement.values()))


_CHECKPOINT_COLUMNS = (
    "checkpoint, job, request_id, state, leave_running, directory, started_at, finished_at, "
    "reason, failed_host, manifest, pinned"
)


_CHECKPOINT_COLUMNS_BUT_MANIFEST = _CHECKPOINT_COLUMNS.replace("manifest", "NULL")


_SCHEDULE_COLUMNS = (
    "job, every_seconds, keep, stop, next_at, last_at, last_checkpoint, last_outcome"
)


def _schedule(row: tuple[object, ...]) -> ScheduleRecord:
    fields = list(row)
    fields[3] = bool(fields[3])
    return ScheduleRecord(*fields)  # type: ignore[arg-type]


def _checkpoint(row: tuple[object, ...]) -> CheckpointRecord:
    fields = list(row)
    fields[4] = bool(fields[4])
    fields[11] = bool(fields[11])
    return CheckpointRecord(*fields)  # type: ignore[arg-type]


class Store:
    """All SQL lives here; callers see records, not rows."""

    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot create state directory for {path}: {exc}") from None
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            self._add_missing_columns()
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open state database {path}: {exc}") from None
        with self._transaction() as db:
            # A database of an earlier version got the tables it lacked above.
            db.execute(
                "INSERT INTO meta(key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )

    def _add_missing_columns(self) -> None:
        """Columns later versions added to a table an earlier version made (its jobs were
        root's: every job was, before owners; no checkpoint was pinned before pins)."""
        for table, column, definition in (
            ("jobs", "owner_uid", "INTEGER NOT NULL DEFAULT 0"),
            ("jobs", "owner", "TEXT NOT NULL DEFAULT 'root'"),
            ("checkpoints", "pinned", "INTEGER NOT NULL DEFAULT 0"),
            ("agents", "image_endpoint", "TEXT NOT NULL DEFAULT ''"),
            ("agents", "image_server_key", "TEXT NOT NULL DEFAULT ''"),
        ):
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- agents -----------------------------------------------------------------------------

    def upsert_agent(self, record: AgentRecord) -> None:
        with self._transaction() as db:
            db.execute(
                """INSERT INTO agents(host, addresses, criu_version, capabilities, agent_version,
                                      pid, state, registered_at, last_heartbeat,
                                      image_endpoint, image_server_key)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(host) DO UPDATE SET
                     addresses=excluded.addresses, criu_version=excluded.criu_version,
                     capabilities=excluded.capabilities, agent_version=excluded.agent_version,
                     pid=excluded.pid, state=excluded.state,
                     registered_at=excluded.registered_at,
                     last_heartbeat=excluded.last_heartbeat,
                     image_endpoint=excluded.image_endpoint,
                     image_server_key=excluded.image_server_key""",
                (
                    record.host,
                    json.dumps(list(record.addresses)),
                    record.criu_version,
                    json.dumps(list(record.capabilities)),
                    record.agent_version,
                    record.pid,
                    record.state,
                    record.registered_at,
                    record.last_heartbeat,
                    record.image_endpoint,
                    record.image_server_key,
                ),
            )

    def update_agents(self, changes: dict[str, tuple[str, float]]) -> None:
        """Set (state, last_heartbeat) for several agents in one transaction."""
        if not changes:
            return
        with self._transaction() as db:
            db.executemany(
                "UPDATE agents SET state = ?, last_heartbeat = ? WHERE host = ?",
                [(state, beat, host) for host, (state, beat) in changes.items()],
            )

    def agents(self) -> list[AgentRecord]:
        rows = self._db.execute(
            """SELECT host, addresses, criu_version, capabilities, agent_version, pid, state,
                      registered_at, last_heartbeat, image_endpoint, image_server_key
               FROM agents ORDER BY host"""
        ).fetchall()
        return [
            AgentRecord(
                host=row[0],
                addresses=tuple(json.loads(row[1])),
                criu_version=row[2],
                capabilities=tuple(json.loads(row[3])),
                agent_version=row[4],
                pid=row[5],
                state=row[6],
                registered_at=row[7],
                last_heartbeat=row[8],
                image_endpoint=row[9],
                image_server_key=row[10],
            )
            for row in rows
        ]

    # --- jobs and ranks ---------------------------------------------------------------------

    def add_rank(
        self, record: RankRecord, now: float, *, owner_uid: int = 0, owner: str = "root"
    ) -> None:
        """Record a launched rank, creating its job (owned by ``owner``) on the first rank."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO jobs(job, state, created_at, owner_uid, owner) "
                "VALUES (?, 'running', ?, ?, ?) "
                "ON CONFLICT(job) DO UPDATE SET state = 'running'",
                (record.job, now, owner_uid, owner),
            )
            db.execute(
                """INSERT INTO ranks(job, rank, host, pid, state, exit_status, command)
                   VALUES (?, ?, ?, ?, ?, ?, ?)""",
                (
                    record.job,
                    record.rank,
                    record.host,
                    record.pid,
                    record.state,
                    record.exit_status,
                    json.dumps(list(record.argv)),
                ),
            )

    def set_rank_state(
        self, job: str, rank: int, state: str, exit_status: int | None = None
    ) -> None:
        """Change a rank's state; the job is 'stopped' once none of its ranks runs."""
        with self._transaction() as db:
            db.execute(
                "UPDATE ranks SET state = ?, exit_status = ? WHERE job = ? AND rank = ?",
                (state, exit_status, job, rank),
            )
            self._refresh_job_state(db, job)

    def set_job_ranks_state(self, job: str, state: str, only_running: bool = True) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE ranks SET state = ? WHERE job = ?"
                + (" AND state = 'running'" if only_running else ""),
                (state, job),
            )
            self._refresh_job_state(db, job)

    @staticmethod
    def _refresh_job_state(db: sqlite3.Connection, job: str) -> None:
        db.execute(
            """UPDATE jobs SET state = CASE WHEN EXISTS (
                   SELECT 1 FROM ranks WHERE job = ? AND state = 'running')
                   THEN 'running' ELSE 'stopped' END
               WHERE job = ?""",
            (job, job),
        )

    def job(self, job: str) -> JobRecord | None:
        row = self._db.execute(
            "SELECT job, state, created_at, latest_checkpoint, owner_uid, owner FROM jobs "
            "WHERE job = ?",
            (job,),
        ).fetchone()
        if row is None:
            return None
        ranks = self._db.execute(
            """SELECT job, rank, host, pid, state, exit_status, command FROM ranks
               WHERE job = ? ORDER BY rank""",
            (job,),
        ).fetchall()
        return JobRecord(
            job=row[0],
            state=row[1],
            created_at=row[2],
            latest_checkpoint=row[3],
            ranks=tuple(
                RankRecord(r[0], r[1], r[2], r[3], r[4], r[5], tuple(json.loads(r[6])))
                for r in ranks
            ),
            owner_uid=row[4],
            owner=row[5],
            schedule=self.schedule(job),
        )

    def jobs(self) -> list[JobRecord]:
        names = [r[0] for r in self._db.execute("SELECT job FROM jobs ORDER BY job").fetchall()]
        return [j for j in (self.job(n) for n in names) if j is not None]

    # --- checkpoints ------------------------------------------------------------------------

    def begin_checkpoint(self, record: CheckpointRecord) -> None:
        with self._transaction() as db:
            db.execute(
                f"INSERT INTO checkpoints({_CHECKPOINT_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.checkpoint,
                    record.job,
                    record.request_id,
                    record.state,
                    int(record.leave_running),
                    record.directory,
                    record.started_at,
                    record.finished_at,
                    record.reason,
                    record.failed_host,
                    record.manifest,
                    int(record.pinned),
                ),
            )

    def commit_checkpoint(
        self, checkpoint: str, job: str, manifest: str, now: float, *, ranks_stop: bool
    ) -> None:
        """Mark committed and make it the job's latest, in one transaction; with
        ``ranks_stop`` the job's running ranks are 'checkpointed' in it too (they end with the
        checkpoint, whether or not the coordinator lives to see them do it)."""
        with self._transaction() as db:
            db.execute(
                """UPDATE checkpoints SET state = 'committed', finished_at = ?, manifest = ?
                   WHERE checkpoint = ? AND state = 'preparing'""",
                (now, manifest, checkpoint),
            )
            db.execute("UPDATE jobs SET latest_checkpoint = ? WHERE job = ?", (checkpoint, job))
            if ranks_stop:
                db.execute(
                    "UPDATE ranks SET state = 'checkpointed' WHERE job = ? AND state = 'running'",
                    (job,),
                )
                self._refresh_job_state(db, job)

    def finish_checkpoint(self, checkpoint: str, reason: str) -> None:
        """Attach the final reason (e.g. hosts that did not acknowledge the commit)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE checkpoints SET reason = ? WHERE checkpoint = ?", (reason, checkpoint)
            )

    def abort_checkpoint(self, checkpoint: str, reason: str, failed_host: str, now: float) -> None:
        with self._transaction() as db:
            db.execute(
                """UPDATE checkpoints SET state = 'aborted', finished_at = ?, reason = ?,
                   failed_host = ? WHERE checkpoint = ? AND state = 'preparing'""",
                (now, reason, failed_host, checkpoint),
            )

    def mark_damaged(self, checkpoint: str, reason: str) -> None:
        """A committed checkpoint's images no longer match its manifest: it is damaged, and the
        job's latest checkpoint becomes its newest committed one (if any), in one transaction."""
        with self._transaction() as db:
            db.execute(
                "UPDATE checkpoints SET state = 'damaged', reason = ? "
                "WHERE checkpoint = ? AND state IN ('committed', 'damaged')",
                (reason, checkpoint),
            )
            self._refresh_latest(db, checkpoint)

    def update_manifest(self, checkpoint: str, manifest: str) -> None:
        """A committed checkpoint's manifest again, with the copies made since (replicas)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE checkpoints SET manifest = ? WHERE checkpoint = ? AND manifest IS NOT NULL",
                (manifest, checkpoint),
            )

    def mark_intact(self, checkpoint: str) -> None:
        """A damaged checkpoint verified again (its store was back, say): committed again."""
        with self._transaction() as db:
            db.execute(
                "UPDATE checkpoints SET state = 'committed', reason = '' "
                "WHERE checkpoint = ? AND state = 'damaged'",
                (checkpoint,),
            )
            self._refresh_latest(db, checkpoint)

    @staticmethod
    def _refresh_latest(db: sqlite3.Connection, checkpoint: str) -> None:
        db.execute(
            """UPDATE jobs SET latest_checkpoint = (
                   SELECT c.checkpoint FROM checkpoints c
                   WHERE c.job = jobs.job AND c.state = 'committed'
                   ORDER BY c.started_at DESC, c.checkpoint DESC LIMIT 1)
               WHERE job = (SELECT job FROM checkpoints WHERE checkpoint = ?)""",
            (checkpoint,),
        )

    def delete_checkpoint(
        self, checkpoint: str, *, images_on: Sequence[str] = (), now: float = 0.0
    ) -> None:
        """Forget a checkpoint; the hosts ``images_on`` still hold its images, to be dropped
        there (``image_drops``), recorded in the same transaction so that no crash between
        the two leaves images nobody will remove."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT job, directory FROM checkpoints WHERE checkpoint = ?", (checkpoint,)
            ).fetchone()
            db.execute("DELETE FROM checkpoints WHERE checkpoint = ?", (checkpoint,))
            if row is not None:
                db.executemany(
                    "INSERT OR IGNORE INTO image_drops(host, checkpoint, job, directory, "
                    "retired_at) VALUES (?, ?, ?, ?, ?)",
                    [(host, checkpoint, row[0], row[1], now) for host in sorted(set(images_on))],
                )

    def image_drops(self, host: str | None = None) -> list[ImageDrop]:
        """The images retired checkpoints left on hosts, oldest first."""
        where, params = ("WHERE host = ?", (host,)) if host is not None else ("", ())
        rows = self._db.execute(
            "SELECT host, checkpoint, job, directory, retired_at FROM image_drops "
            f"{where} ORDER BY retired_at, checkpoint, host",
            params,
        ).fetchall()
        return [ImageDrop(*row) for row in rows]

    def image_dropped(self, host: str, checkpoint: str) -> None:
        with self._transaction() as db:
            db.execute(
                "DELETE FROM image_drops WHERE host = ? AND checkpoint = ?", (host, checkpoint)
            )

    def checkpoint(self, checkpoint: str, *, manifest: bool = True) -> CheckpointRecord | None:
        """The checkpoint's record; without ``manifest`` it leaves the manifest out (read at
        every heartbeat of an agent awaiting a decision: a big job's is megabytes)."""
        columns = _CHECKPOINT_COLUMNS if manifest else _CHECKPOINT_COLUMNS_BUT_MANIFEST
        row = self._db.execute(
            f"SELECT {columns} FROM checkpoints WHERE checkpoint = ?", (checkpoint,)
        ).fetchone()
        return None if row is None else _checkpoint(row)

    def checkpoints(
        self, job: str | None = None, state: str | None = None, *, manifests: bool = True
    ) -> list[CheckpointRecord]:
        """Newest first; without ``manifests`` the records leave theirs out (retention reads
        every checkpoint of a job after each commit: a big job's manifests are megabytes)."""
        clauses, params = [], []
        if job is not None:
            clauses.append("job = ?")
            params.append(job)
        if state is not None:
            clauses.append("state = ?")
            params.append(state)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        columns = _CHECKPOINT_COLUMNS if manifests else _CHECKPOINT_COLUMNS_BUT_MANIFEST
        rows = self._db.execute(
            f"SELECT {columns} FROM checkpoints {where} ORDER BY started_at DESC, checkpoint DESC",
            params,
        ).fetchall()
        return [_checkpoint(r) for r in rows]

    def pin_checkpoint(self, checkpoint: str, pinned: bool) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE checkpoints SET pinned = ? WHERE checkpoint = ?",
                (int(pinned), checkpoint),
            )

    # --- schedules --------------------------------------------------------------------------

    def set_schedule(self, record: ScheduleRecord) -> None:
        """Create or replace the job's schedule (what its last round did is kept)."""
        with self._transaction() as db:
            db.execute(
                f"""INSERT INTO schedules({_SCHEDULE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(job) DO UPDATE SET
                     every_seconds = excluded.every_seconds, keep = excluded.keep,
                     stop = excluded.stop, next_at = excluded.next_at""",
                (
                    record.job,
                    record.every_seconds,
                    record.keep,
                    int(record.stop),
                    record.next_at,
                    record.last_at,
                    record.last_checkpoint,
                    record.last_outcome,
                ),
            )

    def remove_schedule(self, job: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM schedules WHERE job = ?", (job,))

    def schedule(self, job: str) -> ScheduleRecord | None:
        row = self._db.execute(
            f"SELECT {_SCHEDULE_COLUMNS} FROM schedules WHERE job = ?", (job,)
        ).fetchone()
        return None if row is None else _schedule(row)

    def schedules(self) -> list[ScheduleRecord]:
        rows = self._db.execute(
            f"SELECT {_SCHEDULE_COLUMNS} FROM schedules ORDER BY next_at, job"
        ).fetchall()
        return [_schedule(r) for r in rows]

    def schedule_next(self, job: str, next_at: float) -> None:
        with self._transaction() as db:
            db.execute("UPDATE schedules SET next_at = ? WHERE job = ?", (next_at, job))

    def schedule_outcome(
        self,
        job: str,
        *,
        at: float,
        outcome: str,
        checkpoint: str | None = None,
        next_at: float | None = None,
    ) -> None:
        """What a round did, at ``at``: its outcome, the checkpoint it took (None: the last
        one stays), and when the next is due (None: unchanged). Nothing if the schedule was
        switched off meanwhile."""
        with self._transaction() as db:
            db.execute(
                """UPDATE schedules SET last_at = ?, last_outcome = ?,
                     last_checkpoint = COALESCE(?, last_checkpoint),
                     next_at = COALESCE(?, next_at)
                   WHERE job = ?""",
                (at, outcome, checkpoint, next_at, job),
            )

    # --- restarts ---------------------------------------------------------------------------

    def begin_restart(self, record: RestartRecord) -> None:
        with self._transaction() as db:
            db.execute(
                """INSERT INTO restarts(restore, job, checkpoint, state, placement, step,
                                        started_at, finished_at, reason)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    record.restore,
                    record.job,
                    record.checkpoint,
                    record.state,
                    json.dumps({str(r): h for r, h in record.placement.items()}),
                    record.step,
                    record.started_at,
                    record.finished_at,
                    record.reason,
                ),
            )

    def restart_step_done(self, restore: str, step: str) -> None:
        """Every target host completed ``step``."""
        with self._transaction() as db:
            db.execute(
                "UPDATE restarts SET step = ? WHERE restore = ? AND state = 'running'",
                (step, restore),
            )

    def finish_restart(
        self,
        restore: str,
        *,
        now: float,
        reason: str = "",
        pids: dict[int, int] | None = None,
    ) -> None:
        """The restart ended: with ``pids`` it restarted, and every rank runs again on its
        target host with its new PID (in the same transaction); without, it was aborted."""
        restarted = pids is not None
        with self._transaction() as db:
            row = db.execute(
                "SELECT job, placement FROM restarts WHERE restore = ? AND state = 'running'",
                (restore,),
            ).fetchone()
            if row is None:
                return
            db.execute(
                "UPDATE restarts SET state = ?, finished_at = ?, reason = ? WHERE restore = ?",
                ("restarted" if restarted else "aborted", now, reason, restore),
            )
            if pids is None:
                return
            job, placement = row[0], json.loads(row[1])
            db.executemany(
                "UPDATE ranks SET host = ?, pid = ?, state = 'running', exit_status = NULL "
                "WHERE job = ? AND rank = ?",
                [(host, pids.get(int(r), 0), job, int(r)) for r, host in placement.items()],
            )
            self._refresh_job_state(db, job)

    def restarts(self, state: str | None = None) -> list[RestartRecord]:
        where, params = ("WHERE state = ?", (state,)) if state is not None else ("", ())
        rows = self._db.execute(
            "SELECT restore, job, checkpoint, state, placement, step, started_at, finished_at, "
            f"reason FROM restarts {where} ORDER BY started_at",
            params,
        ).fetchall()
        return [
            RestartRecord(
                restore=r[0],
                job=r[1],
                checkpoint=r[2],
                state=r[3],
                placement={int(k): v for k, v in json.loads(r[4]).items()},
                step=r[5],
                started_at=r[6],
                finished_at=r[7],
                reason=r[8],
            )
            for r in rows
        ]

    def restart(self, restore: str) -> RestartRecord | None:
        return next((r for r in self.restarts() if r.restore == restore), None)

    # --- operations and request ids ---------------------------------------------------------

    def save_operation(self, record: OperationRecord) -> None:
        with self._transaction() as db:
            db.execute(
                """INSERT INTO operations(name, kind, job, done, operation, created_at,
                                          finished_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(name) DO UPDATE SET done = excluded.done,
                       operation = excluded.operation, finished_at = excluded.finished_at""",
                (
                    record.name,
                    record.kind,
                    record.job,
                    int(record.done),
                    record.operation,
                    record.created_at,
                    record.finished_at,
                ),
            )

    def operation(self, name: str) -> OperationRecord | None:
        row = self._db.execute(
            f"SELECT {_OPERATION_COLUMNS} FROM operations WHERE name = ?", (name,)
        ).fetchone()
        return None if row is None else _operation(row)

    def operations(
        self, *, job: str | None = None, done: bool | None = None, kind: str | None = None
    ) -> list[OperationRecord]:
        """Newest first."""
        clauses: list[str] = []
        params: list[object] = []
        if kind is not None:
            clauses.append("kind = ?")
            params.append(kind)
        if job is not None:
            clauses.append("job = ?")
            params.append(job)
        if done is not None:
            clauses.append("done = ?")
            params.append(int(done))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._db.execute(
            f"SELECT {_OPERATION_COLUMNS} FROM operations {where} "
            "ORDER BY created_at DESC, name DESC",
            params,
        ).fetchall()
        return [_operation(r) for r in rows]

    def delete_operation(self, name: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM operations WHERE name = ?", (name,))

    def expire(self, before: float) -> list[str]:
        """Remove operations finished before ``before``, and request ids recorded before it;
        the names of the operations removed."""
        with self._transaction() as db:
            names = [
                row[0]
                for row in db.execute(
                    "SELECT name FROM operations WHERE done = 1 AND finished_at < ?", (before,)
                )
            ]
            db.execute("DELETE FROM operations WHERE done = 1 AND finished_at < ?", (before,))
            db.execute("DELETE FROM requests WHERE created_at < ?", (before,))
        return names

    def request(self, caller_uid: int, job: str, request_id: str) -> RequestRecord | None:
        row = self._db.execute(
            "SELECT fingerprint, response, created_at FROM requests "
            "WHERE caller_uid = ? AND job = ? AND request_id = ?",
            (caller_uid, job, request_id),
        ).fetchone()
        return None if row is None else RequestRecord(row[0], bytes(row[1]), row[2])

    def record_request(
        self,
        caller_uid: int,
        job: str,
        request_id: str,
        record: RequestRecord,
    ) -> None:
        with self._transaction() as db:
            db.execute(
                """INSERT OR IGNORE INTO requests(caller_uid, job, request_id, fingerprint,
                                                  response, created_at)
                   VALUES (?, ?, ?, ?, ?, ?)""",
                (
                    caller_uid,
                    job,
                    request_id,
                    record.fingerprint,
                    record.response,
                    record.created_at,
                ),
            )


_OPERATION_COLUMNS = "name, kind, job, done, operation, created_at, finished_at"


def _operation(row: tuple[object, ...]) -> OperationRecord:
    name, kind, job, done, operation, created_at, finished_at = row
    return OperationRecord(
        name=str(name),
        kind=str(kind),
        job=str(job),
        done=bool(done),
        operation=bytes(operation),  # type: ignore[call-overload]
        created_at=float(created_at),  # type: ignore[arg-type]
        finished_at=None if finished_at is None else float(finished_at),  # type: ignore[arg-type]
    )
