from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import bed

from .helpers import SHARED_TMP

LOST_AFTER = 3.0
COMMIT_TIMEOUT = 4.0
PLUGIN_DIR = Path(__file__).with_name("plugins")
# The storage the hosts of testbed3 / testbed6 have: "shared" (one store, /tmp and /dev/shm
# for all), "private" (each host its own, a partner copy of each host's images), or both, a
# module's tests running once on each. A module that sets STORAGE = ("shared",) needs one
# store (it looks at images in the coordinator's folder, say); CRCTL_E2E_STORAGE narrows the
# run to one mode.
STORAGE_MODES = ("shared", "private")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if {"testbed3", "testbed6"} & set(metafunc.fixturenames):
        modes = tuple(getattr(metafunc.module, "STORAGE", STORAGE_MODES))
        only = os.environ.get("CRCTL_E2E_STORAGE", "")
        if only:
            modes = tuple(m for m in modes if m == only)
        metafunc.parametrize("storage", modes, indirect=True, scope="module")


@pytest.fixture(scope="module")
def storage(request: pytest.FixtureRequest) -> str:
    return str(request.param)


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
def testbed3(storage: str) -> Iterator[bed.State]:
    """A real testbed of 3 emulated hosts with a coordinator and 3 agents (separate processes)."""
    private = storage == "private"
    yield from _testbed(3, private_storage=private, replicas=int(private))


@pytest.fixture(scope="module")
def testbed6(storage: str) -> Iterator[bed.State]:
    """Six emulated hosts: a job on h1-h3 can move to h4-h6."""
    private = storage == "private"
    yield from _testbed(6, private_storage=private, replicas=int(private))


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


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A folder of the test's own that every emulated host sees, also when the hosts' /tmp
    is each their own (private storage): under /var/tmp, as a home directory on NFS would be.
    Removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="crctl-e2e-", dir=SHARED_TMP))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
