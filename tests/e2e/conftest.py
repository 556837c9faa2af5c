from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import bed

LOST_AFTER = 3.0
COMMIT_TIMEOUT = 4.0
PLUGIN_DIR = Path(__file__).with_name("plugins")


def _testbed(
    hosts: int, *, with_slurm: bool = False, private_storage: bool = False, replicas: int = 0
) -> Iterator[bed.State]:
    if bed.status(bed.DEFAULT_DIR) is not None:
        pytest.fail(
            "a testbed is already up; run `crctl testbed down` before the tests", pytrace=False
        )
    state = bed.up(
        hosts,
        bed.DEFAULT_DIR,
        heartbeat_interval=0.5,
        agent_lost_after=LOST_AFTER,
        commit_timeout=COMMIT_TIMEOUT,
        plugin_dir=PLUGIN_DIR,
        with_slurm=with_slurm,
        private_storage=private_storage,
        replicas=replicas,
    )
    try:
        yield state
    finally:
        bed.down(bed.DEFAULT_DIR)


@pytest.fixture(scope="module")
def testbed3() -> Iterator[bed.State]:
    """A real testbed of 3 emulated hosts with a coordinator and 3 agents (separate processes)."""
    yield from _testbed(3)


@pytest.fixture(scope="module")
def testbed6() -> Iterator[bed.State]:
    """Six emulated hosts: a job on h1-h3 can move to h4-h6."""
    yield from _testbed(6)


def coordinator_log(state: bed.State) -> str:
    return (Path(state.directory) / "logs" / "coordinator.log").read_text()


@pytest.fixture(scope="module")
def testbed_slurm() -> Iterator[bed.State]:
    """Four hosts with real Slurm: munge, slurmctld, a slurmd per host (nodes h1..h4)."""
    yield from _testbed(4, with_slurm=True)


@pytest.fixture(scope="module")
def private6() -> Iterator[bed.State]:
    """Six hosts that share no storage (each its own /tmp, /dev/shm, agent work directory and
    checkpoint store), with a partner copy of each host's images after every commit."""
    yield from _testbed(6, private_storage=True, replicas=1)
