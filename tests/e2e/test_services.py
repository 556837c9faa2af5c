"""Real services from Debian's packages moved between hosts with a client's connection alive:
PostgreSQL, which refuses to run as root, as a job of its own user `postgres`; nginx with its
default `user www-data;` (a root master whose workers drop privileges) as a root job. Each
service's client is a rank of the same job, on another host, holding one connection."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed import bed

from .helpers import SHARED_TMP, crctl, crctl_json, wait_for
from .users import as_user, crctl_as, tree_users

pytestmark = pytest.mark.e2e

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_PORT = 5544
NGINX = Path("/usr/sbin/nginx")
WEB_PORT = 8080
HTTP_CLIENT = Path(__file__).resolve().parents[1] / "workloads" / "http_keepalive.py"


def require(path: Path, what: str) -> None:
    if not os.access(path, os.X_OK):
        pytest.fail(f"{what} is missing ({path}): run deploy/setup.sh", pytrace=False)


def folder_of(user: str, mode: int) -> Path:
    entry = pwd.getpwnam(user)
    folder = Path(tempfile.mkdtemp(prefix=f"crctl-{user}-", dir=SHARED_TMP))
    os.chown(folder, entry.pw_uid, entry.pw_gid)
    folder.chmod(mode)
    return folder


def rank_pid(job: str, rank: int) -> int:
    ranks = crctl_json("status", job)["ranks"]
    return int(next(r["pid"] for r in ranks if r["rank"] == rank))


def psql(address: str, sql: str) -> str:
    result = subprocess.run(
        [PG_BIN / "psql", "-X", "-A", "-t", "-h", address, "-p", str(PG_PORT), "-U", "postgres",
         "-d", "postgres", "-c", sql],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture
def pg_folder() -> Iterator[Path]:
    """A fresh cluster initialised by user postgres, reachable from the testbed's bridge."""
    require(PG_BIN / "postgres", "PostgreSQL 15")
    folder = folder_of("postgres", 0o700)
    try:
        data = folder / "data"
        made = as_user("postgres", str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust",
                       "-U", "postgres", "--no-sync", cwd=folder)  # fmt: skip
        assert made.returncode == 0, made.stderr
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {bed.netns.BRIDGE_ADDRESS}/24 trust\n")
        yield folder
    finally:
        crctl("kill", "pg", check=False)
        shutil.rmtree(folder, ignore_errors=True)


PG_CLIENT = """
until {bin}/pg_isready -q -h {address} -p {port}; do sleep 0.1; done
i=0
while :; do
  i=$((i + 1))
  echo "INSERT INTO ticks VALUES ($i, pg_backend_pid());"
  sleep 0.02
done | {bin}/psql -X -q -v ON_ERROR_STOP=1 -h {address} -p {port} -U postgres -d postgres
"""


def test_postgres_as_its_own_user_moves_with_a_clients_connection_alive(
    testbed6: bed.State, pg_folder: Path
) -> None:
    old, new = testbed6.hosts["h1"].address, testbed6.hosts["h4"].address
    server = crctl_as("postgres", "launch", "--job", "pg", "--host", "h1", "--rank", "0", "--",
                      str(PG_BIN / "postgres"), "-D", str(pg_folder / "data"),
                      "-c", f"listen_addresses={old}", "-p", str(PG_PORT),
                      "-c", f"unix_socket_directories={pg_folder}",
                      cwd=pg_folder)  # fmt: skip
    assert server.returncode == 0, server.stderr
    wait_for(lambda: _ready(old), timeout=30, what="postgres accepting connections")
    psql(old, "CREATE TABLE ticks (i integer, backend integer)")
    client = crctl_as("postgres", "launch", "--job", "pg", "--host", "h2", "--rank", "1", "--",
                      "/bin/sh", "-c", PG_CLIENT.format(bin=PG_BIN, address=old, port=PG_PORT),
                      cwd=pg_folder)  # fmt: skip
    assert client.returncode == 0, client.stderr
    wait_for(lambda: int(psql(old, "SELECT count(*) FROM ticks")) > 20, timeout=30, what="rows")
    backend = psql(old, "SELECT DISTINCT backend FROM ticks")
    assert backend.isdigit(), backend  # one connection so far
    assert tree_users(rank_pid("pg", 0)) == {"postgres"}
    assert tree_users(rank_pid("pg", 1)) == {"postgres"}

    assert crctl_as("postgres", "checkpoint", "pg").returncode == 0
    restarted = crctl_as("postgres", "restart", "pg", "--map", "h1=h4,h2=h5", cwd=pg_folder)
    assert restarted.returncode == 0, restarted.stderr
    rows = int(psql(new, "SELECT count(*) FROM ticks"))
    wait_for(
        lambda: int(psql(new, "SELECT count(*) FROM ticks")) > rows + 20,
        timeout=30,
        what="the client inserting again after the move",
    )
    assert psql(new, "SELECT DISTINCT backend FROM ticks") == backend  # the same connection
    assert psql(new, "SELECT max(i) = count(*) FROM ticks") == "t"  # none lost, none twice
    assert tree_users(rank_pid("pg", 0)) == {"postgres"}
    assert tree_users(rank_pid("pg", 1)) == {"postgres"}


def _ready(address: str) -> bool:
    probe = subprocess.run(
        [PG_BIN / "pg_isready", "-q", "-h", address, "-p", str(PG_PORT)], check=False
    )
    return probe.returncode == 0


NGINX_CONF = """
user www-data;
worker_processes 2;
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/error.log notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    keepalive_timeout 600s;
    keepalive_requests 1000000;
    server {{
        listen {address}:{port};
        root {folder}/www;
    }}
}}
"""


@pytest.fixture
def web_folder() -> Iterator[Path]:
    require(NGINX, "nginx")
    folder = Path(tempfile.mkdtemp(prefix="crctl-nginx-", dir=SHARED_TMP))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        crctl("kill", "web", check=False)
        shutil.rmtree(folder, ignore_errors=True)


def client_status(folder: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((folder / "client.json").read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return {"responses": 0, "errors": [], "connections": 0}


def test_nginx_whose_workers_drop_privileges_moves_with_a_keepalive_client(
    testbed6: bed.State, web_folder: Path
) -> None:
    old = testbed6.hosts["h1"].address
    page = os.urandom(3000).hex().encode()
    (web_folder / "www").mkdir()
    (web_folder / "www" / "page.html").write_bytes(page)
    conf = web_folder / "nginx.conf"
    conf.write_text(NGINX_CONF.format(folder=web_folder, address=old, port=WEB_PORT))
    crctl("launch", "--job", "web", "--host", "h1", "--rank", "0", "--", str(NGINX), "-c",
          str(conf), "-e", str(web_folder / "error.log"))  # fmt: skip
    crctl("launch", "--job", "web", "--host", "h2", "--rank", "1", "--", sys.executable,
          str(HTTP_CLIENT), "--connect", old, "--port", str(WEB_PORT), "--path", "/page.html",
          "--expect-bytes", str(len(page)),
          "--status", str(web_folder / "client.json"))  # fmt: skip
    wait_for(lambda: client_status(web_folder)["responses"] > 20, timeout=30, what="responses")
    assert tree_users(rank_pid("web", 0)) == {"root", "www-data"}
    before = client_status(web_folder)

    crctl("checkpoint", "web")
    crctl("restart", "web", "--map", "h1=h4,h2=h5")
    wait_for(
        lambda: client_status(web_folder)["responses"] > before["responses"] + 50,
        timeout=30,
        what="the client served again after the move",
    )
    after = client_status(web_folder)
    assert after["errors"] == []
    assert after["connections"] == 1 and after["local_port"] == before["local_port"]
    assert tree_users(rank_pid("web", 0)) == {"root", "www-data"}
    assert {r["host"] for r in crctl_json("status", "web")["ranks"]} == {"h4", "h5"}
