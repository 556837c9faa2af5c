"""A representative part of the workload catalogue (bench/workloads.py runs all of it) on the
real testbed: each workload checkpointed with its ranks left running, checkpointed and
restarted on other hosts, then moved once more, every rank verifying its own progress."""

from __future__ import annotations

import pytest

from testbed import bed, workloads
from tests.workloads.catalogue import WORKLOADS

# One of each kind: threads, a process tree with pipes, SysV IPC, a TCP pair, connected UDP.
REPRESENTATIVE = ("threads64", "pipes_fifo", "sysv_ipc", "tcp_pair", "udp_connected")


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_a_catalogue_workload_survives_leave_running_a_move_and_a_second_move(
    testbed6: bed.State, name: str
) -> None:
    result = workloads.run(testbed6, WORKLOADS[name])
    assert result.passed, result.steps
