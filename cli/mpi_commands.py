"""`crctl mpirun`: an MPI job (MPICH) whose every process is a crctl rank, and `crctl
mpi-launch`, the command of its rank 0 (see crctl/mpi.py for the layout and why)."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from cli import render
from cli.arguments import add_env_option
from cli.client import CoordinatorClient
from cli.exit_codes import ExitCode
from cli.job_commands import current_umask
from crctl import hostlists, mpi
from crctl.config import Config
from crctl.errors import ConfigError, CrctlError, PrerequisiteError
from crctl.v1 import coordinator_pb2

STARTUP_TIMEOUT = 60.0


def _command(argv: list[str]) -> list[str]:
    return argv[1:] if argv and argv[0] == "--" else argv


def allocation_hosts() -> list[str]:
    """The hosts of the Slurm allocation this runs in, if any (SLURM_JOB_NODELIST)."""
    return hostlists.expand(os.environ.get("SLURM_JOB_NODELIST", ""))


def find_mpiexec() -> str:
    """MPICH's mpiexec: beside this Python (the project's MPI extra), else on PATH."""
    beside = Path(sys.executable).with_name("mpiexec")
    found = str(beside) if os.access(beside, os.X_OK) else shutil.which("mpiexec")
    if found is None:
        raise PrerequisiteError(
            "MPICH's mpiexec is not installed: deploy/setup.sh installs it (the mpi extra)"
        )
    return found


def _hosts(client: CoordinatorClient, names: list[str]) -> list[mpi.Host]:
    agents = {a.host: a for a in client.list_agents()}
    hosts = []
    for name in names:
        agent = agents.get(name)
        if agent is None:
            raise CrctlError(f"unknown host {name!r}: no agent registered there")
        ipv4 = [a for a in agent.addresses if ":" not in a]
        if not ipv4:
            raise CrctlError(f"host {name} reports no IPv4 address for MPI to use")
        hosts.append(mpi.Host(name, ipv4[0]))
    return hosts


def _running(job: coordinator_pb2.Job) -> int:
    return sum(1 for r in job.ranks if r.state == "running")


def start_mpi_job(
    client: CoordinatorClient,
    job: str,
    names: list[str],
    *,
    ranks_per_host: int,
    n: int | None,
    command: list[str],
    extra_env: dict[str, str],
) -> tuple[coordinator_pb2.Job, int]:
    """Launch the MPI job (mpiexec as rank 0, which starts the proxies); the job once every
    proxy runs (or mpiexec ended), and its MPI rank count."""
    hosts = _hosts(client, names)
    ranks = mpi.rank_count(hosts, ranks_per_host, n)
    mpiexec = mpi.mpiexec_argv(
        find_mpiexec(), hosts, ranks=ranks, ranks_per_host=ranks_per_host, command=command
    )
    env = mpi.mpi_environment(os.environ, extra_env)
    launcher = [
        sys.executable, "-I", "-m", "cli", "mpi-launch", "--job", job,
        "--hosts", mpi.format_hosts(hosts), "--", *mpiexec,
    ]  # fmt: skip
    client.launch(job, hosts[0].name, 0, launcher, env, cwd=os.getcwd(), umask=current_umask())
    return _started(client, job, len(hosts)), ranks


def cmd_mpirun(args: argparse.Namespace, config: Config) -> int:
    if args.mpi in mpi.REFUSED:
        raise ConfigError(mpi.REFUSED[args.mpi])
    command = _command(list(args.argv))
    names = hostlists.expand(args.hosts or "") or allocation_hosts()
    if not names:
        raise ConfigError("give --hosts h1,h2,... (or run inside a Slurm allocation)")
    with CoordinatorClient.for_config(config, timeout=60) as client:
        job, ranks = start_mpi_job(
            client,
            args.job,
            names,
            ranks_per_host=args.ranks_per_host,
            n=args.n,
            command=command,
            extra_env=dict(args.env),
        )
        early = _ended_early(job)
        if early is not None and not args.wait:
            raise early
        if not args.json:
            print(
                f"mpi job {args.job}: {ranks} MPI ranks on {','.join(names)} "
                f"(crctl ranks: 0 mpiexec on {names[0]}, 1-{len(names)} the hosts' proxies)"
            )
        if args.wait:
            job = _finished(client, args.job)
    if args.json:
        render.print_json(render.to_dict(job))
    if not args.wait:
        return ExitCode.OK
    launcher_rank = next(r for r in job.ranks if r.rank == 0)
    status = launcher_rank.exit_status if launcher_rank.HasField("exit_status") else 1
    print(f"mpi job {args.job} ended: mpiexec exited {status}")
    return status if 0 <= status < 256 else int(ExitCode.FAILED)


def _started(client: CoordinatorClient, job: str, proxies: int) -> coordinator_pb2.Job:
    """Wait until mpiexec and every proxy run, or mpiexec ended (a short job, or a failure)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        record = client.job(job)
        launcher = next((r for r in record.ranks if r.rank == 0), None)
        if launcher is not None and launcher.state != "running":
            return record
        if _running(record) >= proxies + 1:
            return record
        if time.monotonic() > deadline:
            raise CrctlError(
                f"job {job}: {_running(record) - 1} of {proxies} MPI proxies started within "
                f"{STARTUP_TIMEOUT:.0f}s",
                job=job,
            )
        time.sleep(0.1)


def _ended_early(job: coordinator_pb2.Job) -> CrctlError | None:
    """mpiexec ended with an error before the job ran: what to tell the caller."""
    launcher = next(r for r in job.ranks if r.rank == 0)
    if launcher.state == "running" or (
        launcher.HasField("exit_status") and not launcher.exit_status
    ):
        return None
    return CrctlError(
        f"mpiexec of job {job.job} ended ({launcher.state}, exit {launcher.exit_status}) "
        f"before the job ran: see its log on {launcher.host} (rank-0.log of job {job.job} in "
        "the agent's work dir)",
        job=job.job,
    )


def _finished(client: CoordinatorClient, job: str) -> coordinator_pb2.Job:
    """Wait for mpiexec (rank 0) to end, across checkpoints and restarts."""
    while True:
        record = client.job(job)
        launcher = next(r for r in record.ranks if r.rank == 0)
        if launcher.state in ("exited", "killed", "lost", "failed"):
            return record
        time.sleep(0.5)


def cmd_mpi_launch(args: argparse.Namespace, config: Config) -> int:
    """Rank 0 of an MPI job: become mpiexec, while a child reads mpiexec's launch lines, has
    the coordinator start each proxy on its host, then becomes `cat` passing mpiexec's output
    on to this rank's log (so nothing of crctl stays in the job's processes)."""
    hosts = mpi.parse_hosts(args.hosts)
    mpiexec = _command(list(args.argv))
    read_end, write_end = os.pipe()
    log_fd = os.dup(1)
    child = os.fork()
    if child != 0:  # the rank's main process: mpiexec, its output through the pipe
        os.dup2(write_end, 1)
        for fd in (read_end, write_end, log_fd):
            os.close(fd)
        os.execvp(mpiexec[0], mpiexec)
    os.close(write_end)
    try:
        rest = _launch_proxies(args.job, hosts, read_end, log_fd, config)
    except BaseException as exc:
        print(f"crctl mpi-launch: {exc}", file=sys.stderr, flush=True)
        os.kill(os.getppid(), signal.SIGKILL)  # mpiexec would wait for its proxies forever
        os._exit(1)
    os.write(log_fd, rest)
    os.dup2(read_end, 0)
    os.dup2(log_fd, 1)
    os.close(read_end)
    os.close(log_fd)
    os.execvp("cat", ["cat"])


def _launch_proxies(
    job: str, hosts: list[mpi.Host], read_end: int, log_fd: int, config: Config
) -> bytes:
    """Read mpiexec's output up to its end of launch lines (others pass on to the log), start
    the proxies; the bytes read past that line."""
    buffered = b""
    proxies: list[mpi.Proxy] = []
    while True:
        chunk = os.read(read_end, 65536)
        if not chunk:
            raise CrctlError("mpiexec ended before it printed its proxies' commands")
        buffered += chunk
        *lines, buffered = buffered.split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace")
            if line.strip() == mpi.LAUNCH_END:
                _start(job, hosts, proxies, config)
                rest = b"\n".join(lines[lines.index(raw) + 1 :])
                return rest + (b"\n" if rest else b"") + buffered
            proxy = mpi.parse_launch_line(line)
            if proxy is None:
                os.write(log_fd, raw + b"\n")
            else:
                proxies.append(proxy)


def _start(job: str, hosts: list[mpi.Host], proxies: list[mpi.Proxy], config: Config) -> None:
    with CoordinatorClient.for_config(config, timeout=60) as client:
        for proxy in proxies:
            host = mpi.proxy_host(proxy, hosts)
            client.launch(
                job,
                host.name,
                -1,
                list(proxy.argv),
                dict(os.environ),
                cwd=os.getcwd(),
                umask=current_umask(),
            )


def register(add: render.AddCommand) -> None:
    p = add("mpirun", cmd_mpirun, "run an MPI program (MPICH) as a crctl job", True)
    p.add_argument("--job", required=True, help="job name")
    p.add_argument("--hosts", help="hosts, comma-separated (default: the Slurm allocation's)")
    p.add_argument("-n", type=int, help="MPI ranks (default: hosts x --ranks-per-host)")
    p.add_argument("--ranks-per-host", type=int, default=1, metavar="K", help="default 1")
    p.add_argument("--mpi", choices=["mpich", "openmpi"], default="mpich", help="default mpich")
    add_env_option(p)
    p.add_argument("--wait", action="store_true", help="wait for the job; exit with its status")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS", help="the program")
    p = add("mpi-launch", cmd_mpi_launch, "rank 0 of an MPI job (started by crctl mpirun)")
    p.add_argument("--job", required=True)
    p.add_argument("--hosts", required=True, help="NAME=ADDRESS,...")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- MPIEXEC ARGS")
