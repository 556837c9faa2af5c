"""The workload catalogue (bench/workloads.py prints its table) on the real testbed: each
workload checkpointed with its ranks left running, checkpointed and restarted on other hosts,
then moved once more, every rank verifying its own progress, on hosts that share no storage
(the moves fetch the images; a partner copy of each host's is made after every commit).
About two seconds a workload."""

from __future__ import annotations

import pytest

from testbed import bed, workloads
from tests.workloads.catalogue import WORKLOADS


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_a_catalogue_workload_survives_leave_running_a_move_and_a_second_move(
    private6: bed.State, name: str
) -> None:
    result = workloads.run(private6, WORKLOADS[name])
    assert result.passed, result.steps
