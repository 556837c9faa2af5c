"""postgres (2 ranks, as user postgres): rank 0 initdb's a PostgreSQL 15 cluster in its work
dir, runs the server as its child (listening on A0:P only, its Unix socket in the work dir,
trust for the client host's address in pg_hba.conf) and holds one connection over that Unix
socket; rank 1 holds one TCP connection to A0:P through a long-running psql child fed on a
pipe.

Covers: a real database moved with its clients (the postmaster, its backends and background
workers, their shared memory and SysV semaphores, WAL and data files held open), run as the
unprivileged user PostgreSQL insists on (it refuses root): a client connection from another
host through a third-party client (psql, between two pipes) and one over a Unix socket.
Rank 0 speaks the v3 protocol itself (_clients.PgConnection): each operation adds one to a
counter row (UPDATE ... RETURNING), which must answer one more than the last, and checks its
backend is still the one it first connected to. Rank 1 inserts row i with a value that
follows from i, and asks for count(*), sum(v) and the number of distinct backends that
inserted: they must be i, the model's sum and 1 (none lost, none twice, one connection);
every tenth operation inserts in a transaction it rolls back, which must change nothing.
A psql or server that dies is an error.

The server runs with initdb's default settings (128MB of shared buffers in anonymous shared
memory, dynamic shared memory in POSIX segments under /dev/shm, which the host's own /dev/shm
must carry to where the ranks restart); only where it listens and keeps its Unix socket is set.
Rank 0 checks the server it talks to runs with the default kinds of shared memory (an error
otherwise), so a changed default shows. SIGTERM stops psql and the server
(immediate shutdown, SIGQUIT: the cluster is scratch, no shutdown checkpoint to wait for).
Progress: answers checked."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

from tests.workloads.catalogue import _clients, _common, _servers

PG_BIN = Path("/usr/lib/postgresql/15/bin")
USER = "postgres"
READY_PATIENCE = 60.0
ROLLBACK_EVERY = 10
DEFAULT_SHARED_MEMORY = ["mmap", "posix"]  # shared_memory_type, dynamic_shared_memory_type


def _program(name: str) -> str:
    return _servers.find_program(name, str(PG_BIN / name))


def host_mask(address: str) -> str:
    return f"{address}/128" if ":" in address else f"{address}/32"


def start_server(args: _common.Args) -> _servers.Child:
    if os.geteuid() == 0:
        raise PermissionError("PostgreSQL refuses to run as root: run this rank as postgres")
    data = args.work_dir / "data"
    shutil.rmtree(data, ignore_errors=True)  # a fresh cluster every run
    log = args.work_dir / "postgres.log"
    with open(log, "ab") as output:
        subprocess.run(
            [_program("initdb"), "-D", str(data), "-A", "trust", "-U", USER, "--no-sync",
             "-E", "UTF8", "--locale=C", "--no-instructions"],
            stdin=subprocess.DEVNULL, stdout=output, stderr=output, check=True, timeout=120,
        )  # fmt: skip
    with (data / "pg_hba.conf").open("a") as hba:
        for address in sorted(set(args.addresses)):
            hba.write(f"host all all {host_mask(address)} trust\n")
    argv = [
        _program("postgres"),
        *("-D", str(data), "-p", str(args.listen_port(0))),
        *("-c", f"listen_addresses={args.own_address}"),
        *("-c", f"unix_socket_directories={args.work_dir}"),
    ]
    return _servers.spawn("postgres", argv, log=log, stop_signal=signal.SIGQUIT)


def connect(family: int, address: str | tuple[str, int]) -> _clients.PgConnection:
    """A connection once the server accepts it (it may still be starting, or not be up)."""
    deadline = time.monotonic() + READY_PATIENCE
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(10)
            sock.connect(address)
            connection = _clients.PgConnection(sock, USER, "postgres")
            sock.settimeout(None)
            return connection
        except (OSError, _clients.ProtocolError, _clients.PgError):
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def count(args: _common.Args, status: _common.Status, server: _servers.Child) -> None:
    path = str(args.work_dir / f".s.PGSQL.{args.listen_port(0)}")
    client = connect(socket.AF_UNIX, path)
    client.query("CREATE TABLE c0 (id integer PRIMARY KEY, n bigint); INSERT INTO c0 VALUES (1, 0)")
    backend = client.backend_pid
    settings = client.query(
        "SELECT current_setting('shared_memory_type'), "
        "current_setting('dynamic_shared_memory_type')"
    )
    status.check(None if settings == [DEFAULT_SHARED_MEMORY] else f"settings: {settings}")
    expected = 0
    while True:
        expected += 1
        rows = client.query("UPDATE c0 SET n = n + 1 WHERE id = 1 RETURNING n, pg_backend_pid()")
        want = [[str(expected), str(backend)]]
        status.check(None if rows == want else f"UPDATE c0: expected {want}, got {rows}")
        if rows and rows[0][0] is not None and rows[0][0].isdigit():
            expected = int(rows[0][0])
        if (problem := server.problem()) is not None:
            status.error(problem)
            _common.idle_forever()
        _common.pause(0.01)


class Psql:
    """A psql child on one connection: SQL written to its stdin, unaligned rows read back."""

    def __init__(self, args: _common.Args) -> None:
        argv = [
            _program("psql"),
            *("-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"),
            *("-h", args.addresses[0], "-p", str(args.listen_port(0)), "-U", USER),
            *("-d", "postgres"),
        ]
        self.child = _servers.spawn(
            "psql",
            argv,
            log=args.work_dir / "psql.log",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        process = self.child.process
        assert process.stdin is not None and process.stdout is not None
        self.stdin: IO[bytes] = process.stdin
        self.stdout: IO[bytes] = process.stdout

    def row(self, sql: str) -> list[str]:
        """The one row `sql` ends with."""
        self.stdin.write(sql.encode() + b"\n")
        self.stdin.flush()
        line = self.stdout.readline()
        if not line:
            raise _clients.ProtocolError(f"psql ended: {self.child.problem()}")
        return line.decode(errors="replace").rstrip("\n").split("|")


def value_of(i: int) -> int:
    return i * 7919 % 1_000_003


def insert(args: _common.Args, status: _common.Status) -> None:
    connect(socket.AF_INET6 if ":" in args.addresses[0] else socket.AF_INET,
            (args.addresses[0], args.listen_port(0))).stream.sock.close()  # fmt: skip
    psql = Psql(args)
    psql.row("CREATE TABLE t1 (i integer PRIMARY KEY, v bigint, backend integer); SELECT 1;")
    operation = rows = total = 0
    while True:
        operation += 1
        if operation % ROLLBACK_EVERY == 0:
            sql = f"BEGIN; INSERT INTO t1 VALUES ({-operation}, 1, 0); ROLLBACK;"
        else:
            rows += 1
            total += value_of(rows)
            sql = f"INSERT INTO t1 VALUES ({rows}, {value_of(rows)}, pg_backend_pid());"
        want = [str(rows), str(total), "1"]
        got = psql.row(sql + " SELECT count(*), sum(v), count(DISTINCT backend) FROM t1;")
        status.check(None if got == want else f"t1 at row {rows}: expected {want}, got {got}")
        _common.pause(0.01)


def main() -> None:
    args, status = _common.start("postgres", ranks=2)
    try:
        if args.rank == 0:
            count(args, status, start_server(args))
        else:
            insert(args, status)
    except (
        OSError,
        ValueError,
        subprocess.SubprocessError,
        _clients.ProtocolError,
        _clients.PgError,
        _servers.ProgramMissing,
    ) as exc:
        status.error(f"postgres: {exc!r}")
        _common.idle_forever()


if __name__ == "__main__":
    main()
