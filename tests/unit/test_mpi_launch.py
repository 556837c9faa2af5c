"""How `crctl mpirun` builds mpiexec's command and the job's environment, and how its rank 0
reads mpiexec's launch lines (pure, plus a real pipe)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cli import mpi_commands
from crctl import mpi
from crctl.config import Config
from crctl.errors import ConfigError

HOSTS = [mpi.Host("h1", "198.18.0.11"), mpi.Host("h2", "198.18.0.12")]
LINE = (
    "HYDRA_LAUNCH: /venv/bin/hydra_pmi_proxy --control-port 198.18.0.11:40811 --rmk user "
    "--launcher manual --demux poll --pgid 0 --retries 10 --usize -1 --pmi-port 0 "
    "--gpus-per-proc -2 --gpu-subdevs-per-proc -2 --proxy-id {id} "
)


def test_mpiexec_gets_the_hosts_by_address_with_their_slots_and_no_launcher_of_its_own() -> None:
    ranks = mpi.rank_count(HOSTS, 2, None)
    argv = mpi.mpiexec_argv("/v/mpiexec", HOSTS, ranks=ranks, ranks_per_host=2, command=["app"])
    assert argv == [
        "/v/mpiexec", "-launcher", "manual", "-hosts", "198.18.0.11:2,198.18.0.12:2",
        "-n", "4", "app",
    ]  # fmt: skip
    assert mpi.rank_count(HOSTS, 1, 3) == 3


@pytest.mark.parametrize(
    ("hosts", "per_host", "n", "command", "message"),
    [
        (HOSTS, 0, None, ["a"], "--ranks-per-host must be at least 1"),
        (HOSTS, 1, 0, ["a"], "-n must be at least 1"),
        ([], 1, None, ["a"], "no hosts"),
        (HOSTS, 1, None, [], "give the MPI program after --"),
        ([HOSTS[0], HOSTS[0]], 1, None, ["a"], "listed twice"),
    ],
)
def test_bad_requests_are_refused_with_what_to_do(
    hosts: list[mpi.Host], per_host: int, n: int | None, command: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        ranks = mpi.rank_count(hosts, per_host, n)
        mpi.mpiexec_argv("mpiexec", hosts, ranks=ranks, ranks_per_host=per_host, command=command)


def test_the_environment_is_the_callers_with_tcp_forced() -> None:
    env = mpi.mpi_environment({"HOME": "/home/a", "FI_PROVIDER": "verbs"}, {"OMP_NUM_THREADS": "2"})
    assert env["HOME"] == "/home/a" and env["OMP_NUM_THREADS"] == "2"
    assert {k: env[k] for k in mpi.TCP_ONLY} == mpi.TCP_ONLY  # the caller's verbs overridden
    with pytest.raises(ConfigError, match="MPIR_CVAR_NOLOCAL=0 is refused"):
        mpi.mpi_environment({}, {"MPIR_CVAR_NOLOCAL": "0"})


def test_launch_lines_name_their_proxy_and_its_host() -> None:
    proxy = mpi.parse_launch_line(LINE.format(id=1))
    assert proxy is not None and proxy.proxy_id == 1
    assert proxy.argv[0] == "/venv/bin/hydra_pmi_proxy" and proxy.argv[-2:] == ("--proxy-id", "1")
    assert mpi.proxy_host(proxy, HOSTS) == HOSTS[1]
    assert mpi.parse_launch_line("rank 0 says hello") is None
    with pytest.raises(ConfigError, match="only 2 hosts"):
        mpi.proxy_host(mpi.Proxy(2, ()), HOSTS)
    with pytest.raises(ConfigError, match="no --proxy-id"):
        mpi.parse_launch_line("HYDRA_LAUNCH: /bin/proxy --control-port x:1")
    assert mpi.parse_hosts(mpi.format_hosts(HOSTS)) == HOSTS
    with pytest.raises(ConfigError, match="expected NAME=ADDRESS"):
        mpi.parse_hosts("h1")


def test_open_mpi_is_refused_with_the_reason() -> None:
    assert "prted" in mpi.REFUSED["openmpi"] and "use --mpi mpich" in mpi.REFUSED["openmpi"]


def test_rank_0_starts_each_proxy_once_and_passes_every_other_byte_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mpiexec's output through a real pipe: launch lines in two chunks, output before and
    after the end line; the proxies go to their hosts, the rest reaches the log unchanged."""
    started: list[tuple[str, tuple[str, ...]]] = []

    def start(job: str, hosts: list[mpi.Host], proxies: list[mpi.Proxy], config: Config) -> None:
        started.extend((mpi.proxy_host(p, hosts).name, p.argv) for p in proxies)

    monkeypatch.setattr(mpi_commands, "_start", start)
    read_end, write_end = os.pipe()
    log = tmp_path / "log"
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT)
    os.write(write_end, f"early output\n{LINE.format(id=0)}\n{LINE.format(id=1)[:30]}".encode())
    os.write(write_end, f"{LINE.format(id=1)[30:]}\nHYDRA_LAUNCH_END\nrank 0 step 1\npart".encode())
    rest = mpi_commands._launch_proxies("j", HOSTS, read_end, log_fd, Config())
    os.close(log_fd)
    os.close(read_end)
    os.close(write_end)
    assert [host for host, _ in started] == ["h1", "h2"]
    assert started[1][1][-1] == "1"
    assert log.read_text() == "early output\n"
    assert rest == b"rank 0 step 1\npart"


def test_rank_0_fails_when_mpiexec_ends_before_its_launch_lines(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, b"mpiexec: bad option\n")
    os.close(write_end)
    log_fd = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT)
    with pytest.raises(Exception, match="ended before it printed"):
        mpi_commands._launch_proxies("j", HOSTS, read_end, log_fd, Config())
    os.close(log_fd)
    os.close(read_end)
    assert (tmp_path / "log").read_text() == "mpiexec: bad option\n"


def test_inside_a_slurm_allocation_the_hosts_are_its_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_NODELIST", "h[1-3]")
    assert mpi_commands.allocation_hosts() == ["h1", "h2", "h3"]
    monkeypatch.delenv("SLURM_JOB_NODELIST")
    assert mpi_commands.allocation_hosts() == []
