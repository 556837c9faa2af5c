"""The workload catalogue (bench/workloads.py prints its table) on the real testbed: each
workload checkpointed with its ranks left running, checkpointed and restarted on other hosts,
then moved once more, every rank verifying its own progress. About two seconds a workload."""

from __future__ import annotations

import pytest

from testbed import bed, workloads
from tests.workloads.catalogue import WORKLOADS


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_a_catalogue_workload_survives_leave_running_a_move_and_a_second_move(
    testbed6: bed.State, name: str
) -> None:
    result = workloads.run(testbed6, WORKLOADS[name])
    assert result.passed, result.steps
