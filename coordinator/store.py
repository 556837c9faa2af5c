"""The coordinator's durable state in SQLite: agents, jobs, ranks, checkpoints.

Writes are transactional and fsync'd (WAL, synchronous=FULL), so a coordinator killed with
SIGKILL and started again knows everything it had acknowledged."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from crctl.errors import ConfigError

SCHEMA_VERSION = 1

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
    last_heartbeat REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    job TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    latest_checkpoint TEXT
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
    request_id TEXT,
    state TEXT NOT NULL,              -- preparing | committed | aborted
    started_at REAL NOT NULL,
    finished_at REAL,
    reason TEXT,
    manifest TEXT                     -- JSON, written at commit
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
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open state database {path}: {exc}") from None
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )

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
                                      pid, state, registered_at, last_heartbeat)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(host) DO UPDATE SET
                     addresses=excluded.addresses, criu_version=excluded.criu_version,
                     capabilities=excluded.capabilities, agent_version=excluded.agent_version,
                     pid=excluded.pid, state=excluded.state,
                     registered_at=excluded.registered_at,
                     last_heartbeat=excluded.last_heartbeat""",
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
                      registered_at, last_heartbeat FROM agents ORDER BY host"""
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
            )
            for row in rows
        ]
