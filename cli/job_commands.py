"""`crctl launch | jobs | status | kill`: a job's lifecycle."""

from __future__ import annotations

import argparse
import os

from cli import render, schedule_commands
from cli.arguments import add_env_option, between
from cli.client import CoordinatorClient
from cli.exit_codes import ExitCode
from crctl.config import Config
from crctl.errors import ConfigError
from crctl.limits import MAX_RANK
from crctl.v1 import coordinator_pb2


def cmd_launch(args: argparse.Namespace, config: Config) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise ConfigError(
            "give the rank's command after --, e.g. crctl launch --job J --host h1 -- CMD"
        )
    env = {**os.environ, **dict(args.env)}
    cwd = os.path.abspath(args.cwd) if args.cwd else os.getcwd()
    with CoordinatorClient.for_config(config, timeout=60) as client:
        reply = client.launch(
            args.job, args.host, args.rank, argv, env, cwd=cwd, umask=current_umask()
        )
    if args.json:
        render.print_json(render.to_dict(reply))
    else:
        print(f"launched {reply.job} rank {reply.rank} on {reply.host} (pid {reply.pid})")
    return ExitCode.OK


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _rank_status(rank: coordinator_pb2.Rank) -> str:
    if rank.HasField("exit_status"):
        return f"{rank.state} ({rank.exit_status})"
    return rank.state


def cmd_jobs(args: argparse.Namespace, config: Config) -> int:
    with CoordinatorClient.for_config(config) as client:
        jobs = client.jobs()
    if args.json:
        render.print_json([render.to_dict(j) for j in jobs])
        return ExitCode.OK
    render.print_table(
        ["job", "owner", "state", "ranks", "hosts", "latest checkpoint"],
        [
            [
                j.job,
                j.owner,
                j.state,
                len(j.ranks),
                ",".join(sorted({r.host for r in j.ranks})),
                j.latest_checkpoint or "-",
            ]
            for j in jobs
        ],
    )
    return ExitCode.OK


def _print_job(job: coordinator_pb2.Job) -> None:
    print(
        f"job {job.job} of {job.owner}: {job.state}; "
        f"latest checkpoint: {job.latest_checkpoint or '-'}"
    )
    if job.HasField("schedule"):
        print(f"schedule: {schedule_commands.describe(job.schedule)}")
    render.print_table(
        ["rank", "host", "pid", "state", "command"],
        [[r.rank, r.host, r.pid, _rank_status(r), " ".join(r.argv)] for r in job.ranks],
    )
    for awaited in job.awaiting_decision:
        print(
            f"{awaited.host} has not applied the decision on {awaited.checkpoint} yet "
            f"({awaited.decision}; it applies it as soon as it hears it)"
        )


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    with CoordinatorClient.for_config(config) as client:
        job = client.job(args.job)
    if args.json:
        render.print_json(render.to_dict(job))
    else:
        _print_job(job)
    return ExitCode.OK


def cmd_kill(args: argparse.Namespace, config: Config) -> int:
    with CoordinatorClient.for_config(config, timeout=60) as client:
        job = client.kill(args.job)
    if args.json:
        render.print_json(render.to_dict(job))
    else:
        _print_job(job)
    return ExitCode.OK


def register(add: render.AddCommand) -> None:
    p = add("launch", cmd_launch, "start one rank of a job on a host", True)
    p.add_argument("--job", required=True, help="job name (created with its first rank)")
    p.add_argument("--host", required=True, help="the host whose agent starts the rank")
    p.add_argument(
        "--rank",
        type=between(0, MAX_RANK),
        default=-1,
        help=f"rank number, 0 to {MAX_RANK} (default: the next free)",
    )
    add_env_option(p, "the rank")
    p.add_argument(
        "--cwd",
        metavar="DIR",
        help="the rank's working directory, as on its host (default: the current directory)",
    )
    p.add_argument(
        "argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS", help="the rank's command"
    )
    add("jobs", cmd_jobs, "list jobs", True)
    p = add(
        "status",
        cmd_status,
        "show a job's ranks, hosts, PIDs, latest checkpoint and schedule",
        True,
    )
    p.add_argument("job")
    p = add("kill", cmd_kill, "kill every rank of a job", True)
    p.add_argument("job")
