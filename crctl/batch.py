"""`crctl run`'s decisions, for batch scripts (pure): which job and hosts, whether this run
launches the job or restarts it from its checkpoint, what each rank is told, and the job's exit
status. The waiting, signals and requeueing are cli/run_command.py's."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from crctl import hostlists
from crctl.errors import ConfigError, ConflictError

ON_SIGNAL = ("checkpoint-requeue", "checkpoint", "none")


@dataclass(frozen=True)
class Plan:
    job: str
    hosts: tuple[str, ...]  # one per rank, in rank order
    restart_from: str  # the checkpoint to restart from, "" to launch
    in_slurm: bool
    slurm_job: str


def job_name(job: str, environ: Mapping[str, str]) -> str:
    """The job's name: the one given, else ``slurm-<job id>`` in a Slurm job, else ""."""
    slurm_job = environ.get("SLURM_JOB_ID", "")
    return job or (f"slurm-{slurm_job}" if slurm_job else "")


def plan(
    *,
    job: str,
    hosts: str,
    ranks_per_host: int,
    environ: Mapping[str, str],
    latest_checkpoint: str | None,
    running_ranks: int,
    existing: bool,
) -> Plan:
    """What this run does. In a Slurm allocation the job defaults to ``slurm-<job id>`` and the
    hosts to its nodes; a requeued run (``SLURM_RESTART_COUNT`` >= 1) of a job with a committed
    checkpoint restarts it from the latest, onto this allocation's hosts in rank order."""
    slurm_job = environ.get("SLURM_JOB_ID", "")
    name = job_name(job, environ)
    if not name:
        raise ConfigError("give --job NAME (outside a Slurm job there is no default)")
    nodes = hostlists.expand(hosts or environ.get("SLURM_JOB_NODELIST", ""))
    if not nodes:
        raise ConfigError("give --hosts (outside a Slurm allocation there is no default)")
    if ranks_per_host < 1:
        raise ConfigError("--ranks-per-host must be at least 1")
    placement = tuple(host for host in nodes for _ in range(ranks_per_host))
    restarts = int(environ.get("SLURM_RESTART_COUNT", "0") or "0")
    if running_ranks:
        raise ConflictError(
            f"job {name} already runs {running_ranks} ranks: `crctl status {name}`, or kill it",
            job=name,
        )
    restart_from = (latest_checkpoint or "") if restarts >= 1 else ""
    if existing and not restart_from:
        if restarts >= 1:
            raise ConflictError(
                f"this requeued run has no committed checkpoint of {name} to restart from (the "
                "checkpoint at the signal failed, or none was ever made): it is not relaunched "
                "over its old ranks; submit it again with another --job",
                job=name,
            )
        raise ConflictError(
            f"job {name} exists and this is not a requeued run with a checkpoint to restart "
            f"from: remove it or choose another --job",
            job=name,
        )
    return Plan(name, placement, restart_from, bool(slurm_job), slurm_job)


def restart_placement(old: Sequence[str], new: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Where a requeued run puts the job's ranks: the old hosts (in rank order) mapped one to
    one onto the new allocation's (so ranks that shared a host share one again: an MPI job's
    mpiexec and first proxy); by rank order if their numbers differ."""
    old_hosts = list(dict.fromkeys(old))
    new_hosts = list(dict.fromkeys(new))
    if len(old_hosts) == len(new_hosts):
        return dict(zip(old_hosts, new_hosts, strict=True)), []
    return {}, list(new)


def rank_environment(job: str, rank: int, addresses: Sequence[str]) -> dict[str, str]:
    """What each rank learns of its job: its name, its rank, the size, every rank's host address
    in rank order."""
    return {
        "CRCTL_JOB": job,
        "CRCTL_RANK": str(rank),
        "CRCTL_SIZE": str(len(addresses)),
        "CRCTL_PEERS": ",".join(addresses),
    }


def job_status(exit_statuses: Sequence[int | None]) -> int:
    """A finished job's status: the first rank's that failed, else 0 (a rank killed or lost
    without a status counts as 1)."""
    for status in exit_statuses:
        if status is None:
            return 1
        if status != 0:
            return status if 0 < status < 256 else 1
    return 0
