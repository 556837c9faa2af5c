"""`crctl run`: a whole job in one command, for batch scripts. It launches the job (or, in a
requeued Slurm run, restarts it from its latest checkpoint onto this allocation), waits for it,
and on SIGUSR1 or SIGTERM (Slurm's `--signal=B:USR1@T`, preemption) checkpoints it and has
Slurm requeue the batch job. The job's ranks never outlive it: it kills them on its way out.

SIGUSR1 (the warning) checkpoints and requeues; SIGTERM (Slurm ending the job: scancel,
preemption, the time limit) checkpoints but does not requeue: a cancelled job must not come
back, and Slurm requeues a preempted job itself (PreemptMode=REQUEUE), which then restarts.

Exit codes: the job's own status when it ends by itself (the first failing rank's); 10 after a
committed checkpoint on a signal (and, on SIGUSR1 with checkpoint-requeue in a Slurm job,
`scontrol requeue` done); 11 when that checkpoint failed (the job is killed, not requeued); 12
when a signal came with --on-signal none (the job is killed); the usual crctl codes (2-9) for
refusals before anything ran, among them 5 for a requeued run with no committed checkpoint to
restart from (its checkpoint failed): it never relaunches over the old ranks, nor restarts from
a checkpoint that did not commit."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from types import FrameType

from cli import render
from cli.arguments import add_env_option, seconds
from cli.client import CoordinatorClient
from cli.exit_codes import ExitCode
from cli.job_commands import current_umask
from cli.mpi_commands import start_mpi_job
from crctl import batch
from crctl.config import Config
from crctl.errors import CrctlError, NotFoundError
from crctl.v1 import coordinator_pb2

CHECKPOINTED = 10
CHECKPOINT_FAILED = 11
SIGNALLED = 12
ENDED = ("exited", "killed", "lost", "failed")


class _Signals:
    def __init__(self) -> None:
        self.received: int | None = None
        for signum in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(signum, self._note)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum


def _job(client: CoordinatorClient, job: str) -> coordinator_pb2.Job | None:
    try:
        return client.job(job)
    except NotFoundError:
        return None


def _addresses(client: CoordinatorClient, hosts: tuple[str, ...]) -> list[str]:
    agents = {a.host: a for a in client.list_agents()}
    found = []
    for host in hosts:
        agent = agents.get(host)
        if agent is None:
            raise NotFoundError(f"unknown host {host!r}: no agent registered there", host=host)
        ipv4 = [a for a in agent.addresses if ":" not in a] or list(agent.addresses)
        found.append(ipv4[0] if ipv4 else host)
    return found


def _start(client: CoordinatorClient, plan: batch.Plan, args: argparse.Namespace) -> None:
    if plan.restart_from:
        old = [r.host for r in sorted(client.job(plan.job).ranks, key=lambda r: r.rank)]
        host_map, hosts = batch.restart_placement(old, list(plan.hosts))
        request = coordinator_pb2.RestartRequest(
            job=plan.job, checkpoint=plan.restart_from, host_map=host_map, hosts=hosts
        )
        outcome = client.restart_outcome(request)
        if outcome is None or not outcome.restarted:
            reason = outcome.reason if outcome is not None else "no outcome"
            raise CrctlError(f"restart of {plan.job} from {plan.restart_from} failed: {reason}")
        print(f"crctl run: restarted {plan.job} from {plan.restart_from} on {','.join(plan.hosts)}")
        return
    command = list(args.argv[1:] if args.argv[:1] == ["--"] else args.argv)
    if args.mpi:
        hosts = list(dict.fromkeys(plan.hosts))
        start_mpi_job(client, plan.job, hosts, ranks_per_host=args.ranks_per_host, n=None,
                      command=command, extra_env=dict(args.env))  # fmt: skip
        print(f"crctl run: launched MPI job {plan.job} on {','.join(hosts)}", flush=True)
        return
    addresses = _addresses(client, plan.hosts)
    for rank, host in enumerate(plan.hosts):
        env = {**os.environ, **dict(args.env), **batch.rank_environment(plan.job, rank, addresses)}
        client.launch(plan.job, host, rank, command, env, cwd=os.getcwd(), umask=current_umask())
    print(f"crctl run: launched {plan.job}: {len(plan.hosts)} ranks on {','.join(plan.hosts)}")


def _checkpoint(client: CoordinatorClient, job: str, timeout: float) -> tuple[bool, str]:
    outcome = client.checkpoint_outcome(job, leave_running=False, timeout=timeout)
    if outcome is None:
        return False, "no outcome"
    return outcome.committed, outcome.checkpoint if outcome.committed else outcome.reason


def _requeue(plan: batch.Plan) -> str:
    """Have Slurm requeue this batch job; what happened, for the log."""
    if not plan.in_slurm:
        return "not a Slurm job: nothing to requeue"
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return "scontrol is not on PATH: the job was not requeued"
    done = subprocess.run(
        [scontrol, "requeue", plan.slurm_job], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return f"scontrol requeue {plan.slurm_job} failed: {done.stderr.strip()}"
    return f"Slurm job {plan.slurm_job} requeued"


def _on_signal(
    client: CoordinatorClient, plan: batch.Plan, args: argparse.Namespace, signum: int
) -> int:
    if args.on_signal == "none":
        print(f"crctl run: signal received: killing {plan.job}", file=sys.stderr)
        return SIGNALLED
    committed, what = _checkpoint(client, plan.job, args.checkpoint_timeout)
    if not committed:
        print(
            f"crctl run: the checkpoint of {plan.job} failed ({what}); the job is killed and "
            "not requeued: its latest checkpoint stays the one before",
            file=sys.stderr,
        )
        return CHECKPOINT_FAILED
    print(f"crctl run: checkpointed {plan.job} as {what}", flush=True)
    if args.on_signal != "checkpoint-requeue":
        return CHECKPOINTED
    if signum == signal.SIGTERM:
        # Slurm is ending the batch job (scancel, preemption, the time limit): a cancelled job
        # must not come back, and a preempted one is requeued by Slurm's own PreemptMode.
        print(
            "crctl run: SIGTERM: Slurm is ending this job, so crctl does not requeue it (a "
            "preempted job is requeued by Slurm itself with PreemptMode=REQUEUE)",
            flush=True,
        )
        return CHECKPOINTED
    print(f"crctl run: {_requeue(plan)}", flush=True)
    return CHECKPOINTED


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    signals = _Signals()
    with CoordinatorClient.for_config(config, timeout=60) as client:
        name = batch.job_name(args.job, os.environ)
        existing = _job(client, name) if name else None
        plan = batch.plan(
            job=args.job,
            hosts=args.hosts or "",
            ranks_per_host=args.ranks_per_host,
            environ=os.environ,
            latest_checkpoint=existing.latest_checkpoint if existing else None,
            running_ranks=sum(r.state == "running" for r in existing.ranks) if existing else 0,
            existing=existing is not None,
        )
        code: int | None = None
        try:
            _start(client, plan, args)
            while code is None:
                if signals.received is not None:
                    code = _on_signal(client, plan, args, signals.received)
                    break
                job = client.job(plan.job)
                # An MPI job ends with mpiexec (rank 0), whose status is the job's.
                ending = [r for r in job.ranks if r.rank == 0] if args.mpi else list(job.ranks)
                if all(r.state in ENDED for r in ending):
                    code = batch.job_status(
                        [r.exit_status if r.HasField("exit_status") else None for r in ending]
                    )
                    print(f"crctl run: {plan.job} ended with status {code}")
                time.sleep(0.2)
        finally:
            left = _job(client, plan.job)
            if left is not None and any(r.state == "running" for r in left.ranks):
                client.kill(plan.job)
                print(f"crctl run: killed what was left of {plan.job}", file=sys.stderr)
    if args.json:
        render.print_json({"job": plan.job, "exit_code": code})
    return int(code if code is not None else ExitCode.FAILED)


def register(add: render.AddCommand) -> None:
    p = add("run", cmd_run, "run a whole job for a batch script (see `crctl run --help`)", True)
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--job", default="", help="job name (default in Slurm: slurm-<job id>)")
    p.add_argument("--hosts", help="host list, e.g. node[01-04] (default: the Slurm allocation)")
    p.add_argument("--ranks-per-host", type=int, default=1, metavar="K", help="default 1")
    p.add_argument(
        "--mpi", action="store_true", help="run the command as an MPI program (crctl mpirun)"
    )
    p.add_argument(
        "--on-signal",
        choices=batch.ON_SIGNAL,
        default="checkpoint-requeue",
        help="on SIGUSR1/SIGTERM: checkpoint and requeue (default), only checkpoint, or kill",
    )
    p.add_argument(
        "--checkpoint-timeout",
        type=seconds,
        default=0.0,
        metavar="SECONDS",
        help="prepare deadline of the checkpoint on a signal (fit it in Slurm's lead time)",
    )
    add_env_option(p)
    p.add_argument(
        "argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS", help="each rank's command"
    )
