"""Spreading as well as packing (issue 14, item 3), with real CRIU: a ring of 4 ranks packed two
to a host (ranks 0, 1 on h1 and 2, 3 on h2, each listening on its own port at its host's
address) is checkpointed and restarted one rank per host on h3-h6, where the connections
between ranks that shared an address, and to the ranks of the other host, each end at the new
host of the rank that holds it; the ring counts on with no token lost, then moves back packed
onto two hosts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testbed import bed
from testbed.ringjob import RING_PORT, RingJob

from .helpers import running_ring
from .test_restart import assert_nothing_left, checkpoint_and_stop, ranks_by_host, restart

PACKED = ["h1", "h1", "h2", "h2"]
SPREAD = ["h3", "h4", "h5", "h6"]


@pytest.fixture
def ring(testbed6: bed.State, request: pytest.FixtureRequest) -> Iterator[RingJob]:
    yield from running_ring(testbed6, request, PACKED)


def local_addresses(ring: RingJob) -> dict[int, set[str]]:
    """Each rank's own end of its two ring connections, by its address."""
    found: dict[int, set[str]] = {}
    for status in ring.statuses():
        for pair in (status.get("inbound") or [])[:1] + (status.get("outbound") or [])[:1]:
            found.setdefault(status["rank"], set()).add(pair.rsplit(":", 1)[0])
    return found


def peer_endpoints(ring: RingJob) -> dict[int, str]:
    """Where each rank's outbound connection ends: its successor's listening endpoint."""
    return {
        s["rank"]: s["outbound"][1] for s in ring.statuses() if len(s.get("outbound") or []) == 2
    }


def counts_on(ring: RingJob, hosts: list[str], testbed: bed.State) -> None:
    stopped_at = [s["last_sequence"] for s in ring.statuses()]
    ring.wait_for_progress(tokens=30)
    assert ring.errors() == []
    now = [s["last_sequence"] for s in ring.statuses()]
    assert all(n > s for n, s in zip(now, stopped_at, strict=True))
    address = {rank: testbed.hosts[host].address for rank, host in enumerate(hosts)}
    assert local_addresses(ring) == {rank: {a} for rank, a in address.items()}
    successor = {rank: (rank + 1) % len(hosts) for rank in address}
    assert peer_endpoints(ring) == {
        rank: f"{address[succ]}:{RING_PORT + succ}" for rank, succ in successor.items()
    }


def test_a_ring_packed_two_to_a_host_spreads_over_four_hosts_and_packs_back(
    testbed6: bed.State, ring: RingJob
) -> None:
    checkpoint_and_stop(ring)
    code, outcome, stderr = restart(ring, "--hosts", ",".join(SPREAD))
    assert code == 0, stderr
    assert outcome["restarted"] is True
    assert ranks_by_host(ring.job) == dict(enumerate(SPREAD))
    counts_on(ring, SPREAD, testbed6)

    checkpoint_and_stop(ring)
    code, outcome, stderr = restart(ring, "--map", "h3=h1,h4=h1,h5=h2,h6=h2")
    assert code == 0, stderr
    assert ranks_by_host(ring.job) == dict(enumerate(PACKED))
    counts_on(ring, PACKED, testbed6)


def test_a_spread_ring_packs_onto_two_other_hosts_by_rank_order(
    testbed6: bed.State, ring: RingJob
) -> None:
    """Split and packed at once: h1's ranks 0, 1 go to h3 and h4, and so do h2's 2, 3."""
    checkpoint_and_stop(ring)
    code, _, stderr = restart(ring, "--hosts", "h3,h4")
    assert code == 0, stderr
    assert ranks_by_host(ring.job) == {0: "h3", 1: "h4", 2: "h3", 3: "h4"}
    counts_on(ring, ["h3", "h4", "h3", "h4"], testbed6)
    checkpoint_and_stop(ring)
    assert_nothing_left(testbed6, ring.job, ["h3", "h4"])
