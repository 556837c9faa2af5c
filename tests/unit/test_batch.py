"""`crctl run`'s decisions for batch scripts: the job and hosts (Slurm's defaults), launch or
restart, what ranks are told, the job's status."""

from __future__ import annotations

from typing import Any

import pytest

from crctl import batch
from crctl.errors import ConfigError, ConflictError

SLURM = {"SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "h[1-2]"}


def plan(**kw: Any) -> batch.Plan:
    defaults: dict[str, Any] = {
        "job": "",
        "hosts": "",
        "ranks_per_host": 1,
        "environ": SLURM,
        "latest_checkpoint": None,
        "running_ranks": 0,
        "existing": False,
    }
    return batch.plan(**{**defaults, **kw})


def test_a_first_run_in_slurm_launches_the_allocation_as_job_slurm_id() -> None:
    first = plan()
    assert (first.job, first.hosts, first.restart_from, first.in_slurm) == (
        "slurm-77", ("h1", "h2"), "", True,
    )  # fmt: skip
    packed = plan(ranks_per_host=2, hosts="h[3-4]")
    assert packed.hosts == ("h3", "h3", "h4", "h4")


def test_a_requeued_run_restarts_from_the_latest_checkpoint_on_the_new_nodes() -> None:
    environ = {**SLURM, "SLURM_RESTART_COUNT": "1", "SLURM_JOB_NODELIST": "h[3-4]"}
    again = plan(environ=environ, latest_checkpoint="ckpt-9", existing=True)
    assert (again.restart_from, again.hosts) == ("ckpt-9", ("h3", "h4"))
    # requeued before any checkpoint committed: launched afresh
    assert plan(environ=environ, latest_checkpoint=None).restart_from == ""


def test_refusals_say_what_to_do() -> None:
    with pytest.raises(ConfigError, match="give --job"):
        plan(environ={}, hosts="h1")
    with pytest.raises(ConfigError, match="give --hosts"):
        plan(environ={}, job="j")
    with pytest.raises(ConflictError, match="already runs 2 ranks"):
        plan(existing=True, running_ranks=2)
    with pytest.raises(ConflictError, match="not a requeued run"):
        plan(existing=True, latest_checkpoint="ckpt-1")
    requeued = {**SLURM, "SLURM_RESTART_COUNT": "2"}
    with pytest.raises(ConflictError, match="no committed checkpoint of slurm-77"):
        plan(environ=requeued, existing=True, latest_checkpoint=None)
    with pytest.raises(ConfigError, match="at least 1"):
        plan(ranks_per_host=0)


def test_ranks_learn_their_job_rank_size_and_peers() -> None:
    assert batch.rank_environment("j", 1, ["10.0.0.1", "10.0.0.2"]) == {
        "CRCTL_JOB": "j", "CRCTL_RANK": "1", "CRCTL_SIZE": "2",
        "CRCTL_PEERS": "10.0.0.1,10.0.0.2",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("statuses", "status"), [([0, 0], 0), ([0, 3, 4], 3), ([None, 0], 1), ([-9], 1)]
)
def test_the_job_status_is_the_first_failing_ranks(statuses: list[int | None], status: int) -> None:
    assert batch.job_status(statuses) == status


def test_a_requeued_run_maps_the_old_hosts_onto_the_new_one_to_one() -> None:
    # an MPI job: mpiexec and the first proxy on h1, the second proxy on h2
    assert batch.restart_placement(["h1", "h1", "h2"], ["h3", "h4"]) == (
        {"h1": "h3", "h2": "h4"}, [],
    )  # fmt: skip
    assert batch.restart_placement(["h1", "h2"], ["h5", "h5", "h6", "h6"]) == (
        {"h1": "h5", "h2": "h6"}, [],
    )  # fmt: skip
    assert batch.restart_placement(["h1", "h2", "h3"], ["h4"]) == ({}, ["h4"])
