"""The workload catalogue (bench/workloads.py prints its table) on the real testbed: each
workload checkpointed with its ranks left running, checkpointed and restarted on other hosts,
then moved once more, every rank verifying its own progress. About two seconds a workload."""

from __future__ import annotations

import pytest

from testbed import bed, workloads
from tests.workloads.catalogue import WORKLOADS

# Open defects, with what was seen; bench/workloads.py still runs them.
OPEN = {
    "eventfd_timerfd": "a periodic CLOCK_MONOTONIC timerfd never fires again after CRIU 4.2.1 "
    "restores it, even in place (its interval is kept)",
}


@pytest.mark.parametrize("name", sorted(set(WORKLOADS) - set(OPEN)))
def test_a_catalogue_workload_survives_leave_running_a_move_and_a_second_move(
    testbed6: bed.State, name: str
) -> None:
    result = workloads.run(testbed6, WORKLOADS[name])
    assert result.passed, result.steps
