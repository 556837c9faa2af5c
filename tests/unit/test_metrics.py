"""The coordinator's metrics: counted from the jobs' events bus, gauges read at scrape time,
each coordinator's in a registry of its own, served over HTTP at metrics_address."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from coordinator.daemon import build, start_metrics
from coordinator.job_events import JobEvents, rank_changed
from coordinator.metrics import CoordinatorMetrics, serve_metrics
from coordinator.registry import AgentRegistry
from coordinator.store import Store
from crctl.clock import ManualClock
from crctl.config import load_config
from crctl.errors import ConfigError, UnavailableError
from crctl.v1 import control_pb2, coordinator_pb2

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scraped(metrics: CoordinatorMetrics) -> Samples:
    """Every sample of a scrape, parsed back from the text Prometheus would read."""
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def new_metrics(
    states: list[str] | None = None, in_flight: Mapping[str, int] | None = None
) -> CoordinatorMetrics:
    return CoordinatorMetrics(agent_states=lambda: states or [], in_flight=lambda: in_flight or {})


def committed(
    duration: float, frozen: float, *ranks: tuple[int, float]
) -> coordinator_pb2.JobEvent:
    """A committed checkpoint's outcome event; ranks are (bytes, dump_seconds)."""
    event = coordinator_pb2.JobEvent()
    outcome = event.checkpoint_outcome
    outcome.checkpoint = "ckpt-1"
    outcome.committed = True
    outcome.duration_seconds = duration
    outcome.frozen_seconds = frozen
    for number, (size, dump) in enumerate(ranks):
        outcome.ranks.add(rank=number, host=f"h{number}", bytes=size, dump_seconds=dump)
    return event


def aborted_checkpoint() -> coordinator_pb2.JobEvent:
    event = coordinator_pb2.JobEvent()
    event.checkpoint_outcome.checkpoint = "ckpt-2"
    event.checkpoint_outcome.reason = "h2 voted no"
    event.checkpoint_outcome.duration_seconds = 60.0
    return event


def restart(restarted: bool, duration: float) -> coordinator_pb2.JobEvent:
    event = coordinator_pb2.JobEvent()
    event.restart_outcome.restore = "rst-1"
    event.restart_outcome.restarted = restarted
    event.restart_outcome.duration_seconds = duration
    return event


@pytest.fixture
def bus() -> JobEvents:
    return JobEvents(ManualClock())


def test_checkpoint_outcomes_are_counted_with_their_durations_and_bytes(bus: JobEvents) -> None:
    metrics = new_metrics()
    bus.listen(metrics.on_event)

    bus.publish("ring", committed(0.3, 0.04, (1000, 0.02), (500, 0.2)), operation="operations/a")
    bus.publish("ring", committed(7.0, 2.0, (24, 3.0)), operation="operations/b")
    bus.publish("ring", aborted_checkpoint(), operation="operations/c")

    s = scraped(metrics)
    assert s["crctl_checkpoints_total", (("outcome", "committed"),)] == 2
    assert s["crctl_checkpoints_total", (("outcome", "aborted"),)] == 1
    assert s["crctl_checkpoint_bytes_written_total", ()] == 1524
    # The aborted checkpoint's minute is not a checkpoint's duration.
    assert s["crctl_checkpoint_duration_seconds_count", ()] == 2
    assert s["crctl_checkpoint_duration_seconds_sum", ()] == pytest.approx(7.3)
    assert s["crctl_checkpoint_duration_seconds_bucket", (("le", "0.5"),)] == 1
    assert s["crctl_checkpoint_duration_seconds_bucket", (("le", "10.0"),)] == 2
    assert s["crctl_checkpoint_frozen_seconds_sum", ()] == pytest.approx(2.04)
    assert s["crctl_checkpoint_frozen_seconds_bucket", (("le", "0.05"),)] == 1
    # One observation per rank, no host or rank label.
    assert s["crctl_rank_dump_seconds_count", ()] == 3
    assert s["crctl_rank_dump_seconds_sum", ()] == pytest.approx(3.22)
    assert s["crctl_rank_dump_seconds_bucket", (("le", "0.025"),)] == 1
    assert s["crctl_rank_dump_seconds_bucket", (("le", "0.25"),)] == 2
    assert s["crctl_rank_dump_seconds_bucket", (("le", "+Inf"),)] == 3


def test_restart_outcomes_and_rank_changes_are_counted(bus: JobEvents) -> None:
    metrics = new_metrics()
    bus.listen(metrics.on_event)

    bus.publish("ring", restart(True, 1.5))
    bus.publish("ring", restart(False, 30.0))
    bus.publish("ring", rank_changed(0, "h4", 10, "running"))
    bus.publish("ring", rank_changed(1, "h5", 11, "running"))
    bus.publish("ring", rank_changed(1, "h5", 11, "exited", exit_status=0))

    s = scraped(metrics)
    assert s["crctl_restarts_total", (("outcome", "restarted"),)] == 1
    assert s["crctl_restarts_total", (("outcome", "aborted"),)] == 1
    assert s["crctl_restart_duration_seconds_count", ()] == 1
    assert s["crctl_restart_duration_seconds_sum", ()] == 1.5
    assert s["crctl_restart_duration_seconds_bucket", (("le", "1.0"),)] == 0
    assert s["crctl_restart_duration_seconds_bucket", (("le", "2.5"),)] == 1
    assert s["crctl_rank_events_total", (("state", "running"),)] == 2
    assert s["crctl_rank_events_total", (("state", "exited"),)] == 1


def test_outcomes_not_seen_yet_are_reported_as_zero() -> None:
    text = generate_latest(new_metrics().registry).decode()
    assert 'crctl_checkpoints_total{outcome="committed"} 0.0' in text
    assert 'crctl_checkpoints_total{outcome="aborted"} 0.0' in text
    assert 'crctl_restarts_total{outcome="restarted"} 0.0' in text
    assert 'crctl_agents{state="lost"} 0.0' in text
    assert 'crctl_operations_in_flight{kind="restart"} 0.0' in text


def test_other_events_count_nothing(bus: JobEvents) -> None:
    metrics = new_metrics()
    before = scraped(metrics)
    bus.listen(metrics.on_event)
    phase = coordinator_pb2.JobEvent()
    phase.checkpoint_phase.phase = "preparing"
    bus.publish("ring", phase)
    bus.publish("ring", coordinator_pb2.JobEvent(snapshot=coordinator_pb2.Job(job="ring")))
    assert scraped(metrics) == before


def test_gauges_are_read_when_scraped(tmp_path: Path) -> None:
    clock = ManualClock()
    agents = AgentRegistry(Store(tmp_path / "s.db"), clock, lost_after=5)
    running = {"checkpoint": 1, "restart": 0}
    metrics = CoordinatorMetrics(
        agent_states=lambda: [a.state for a in agents.agents()], in_flight=lambda: running
    )
    for host in ("h1", "h2", "h3"):
        agents.register(control_pb2.AgentInfo(host=host))
    clock.advance(4)
    agents.heartbeat("h3")
    clock.advance(2)
    agents.sweep()  # h1 and h2 silent for 6 s: lost
    running["restart"] = 2

    s = scraped(metrics)
    assert s["crctl_agents", (("state", "alive"),)] == 1
    assert s["crctl_agents", (("state", "lost"),)] == 2
    assert s["crctl_operations_in_flight", (("kind", "checkpoint"),)] == 1
    assert s["crctl_operations_in_flight", (("kind", "restart"),)] == 2


def test_a_failing_gauge_costs_only_itself() -> None:
    def broken() -> Mapping[str, int]:
        raise RuntimeError("operations service gone")

    metrics = CoordinatorMetrics(agent_states=lambda: ["alive"], in_flight=broken)
    with capture_logs() as events:
        s = scraped(metrics)
    assert [e["metric"] for e in events if e["event"] == "metrics_gauge_failed"] == [
        "crctl_operations_in_flight"
    ]
    assert s["crctl_agents", (("state", "alive"),)] == 1
    assert not any(name == "crctl_operations_in_flight" for name, _ in s)
    assert s["crctl_checkpoints_total", (("outcome", "committed"),)] == 0


def test_each_coordinator_has_its_own_registry(bus: JobEvents) -> None:
    first, second = new_metrics(), new_metrics()
    bus.listen(first.on_event)
    bus.publish("ring", aborted_checkpoint())
    assert scraped(first)["crctl_checkpoints_total", (("outcome", "aborted"),)] == 1
    assert scraped(second)["crctl_checkpoints_total", (("outcome", "aborted"),)] == 0
    assert b"crctl_" not in generate_latest(REGISTRY)


def get_metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return str(response.read().decode())


class NoOrders:
    """A control plane no order may go to (nothing here asks an agent for anything)."""

    async def send(
        self, host: str, message: control_pb2.CoordinatorMessage, *, wait: float = 0
    ) -> None:
        raise AssertionError(f"order sent to {host}")

    async def request(
        self, host: str, message: control_pb2.CoordinatorMessage, timeout: float
    ) -> control_pb2.AgentMessage:
        raise AssertionError(f"order sent to {host}")


def test_the_coordinator_serves_metrics_of_its_own_events_and_agents(tmp_path: Path) -> None:
    config = load_config(
        env={},
        flags={
            "state_db": str(tmp_path / "c.db"),
            "checkpoint_dir": str(tmp_path / "checkpoints"),
            "metrics_address": "127.0.0.1:0",
        },
    )

    async def scrape() -> str:
        coordinator = build(config, NoOrders(), ManualClock())
        coordinator.registry.register(control_pb2.AgentInfo(host="h1"))
        server = start_metrics(config, coordinator)
        assert server is not None
        try:
            coordinator.events.publish("ring", aborted_checkpoint())
            return await asyncio.to_thread(get_metrics, server.port)
        finally:
            server.close()
            coordinator.store.close()

    body = asyncio.run(scrape())
    assert 'crctl_checkpoints_total{outcome="aborted"} 1.0' in body
    assert 'crctl_agents{state="alive"} 1.0' in body
    assert 'crctl_operations_in_flight{kind="checkpoint"} 0.0' in body


def test_no_metrics_address_serves_nothing(tmp_path: Path) -> None:
    config = load_config(
        env={},
        flags={"state_db": str(tmp_path / "c.db"), "checkpoint_dir": str(tmp_path / "c")},
    )

    async def started() -> object:
        coordinator = build(config, NoOrders(), ManualClock())
        try:
            return start_metrics(config, coordinator)
        finally:
            coordinator.store.close()

    assert asyncio.run(started()) is None


@pytest.fixture
def served() -> Iterator[tuple[CoordinatorMetrics, int]]:
    metrics = new_metrics(states=["alive", "alive"])
    with capture_logs() as events:
        server = serve_metrics("127.0.0.1:0", metrics.registry)
    assert [(e["event"], e["port"]) for e in events] == [("metrics_serving", server.port)]
    try:
        yield metrics, server.port
    finally:
        server.close()


def test_the_endpoint_answers_a_get_of_metrics(
    served: tuple[CoordinatorMetrics, int], bus: JobEvents
) -> None:
    metrics, port = served
    bus.listen(metrics.on_event)
    bus.publish("ring", committed(1.0, 0.1, (4096, 0.5)))

    body = get_metrics(port)
    assert 'crctl_checkpoints_total{outcome="committed"} 1.0' in body
    assert "crctl_checkpoint_bytes_written_total 4096.0" in body
    assert 'crctl_agents{state="alive"} 2.0' in body


def test_a_closed_endpoint_releases_its_port() -> None:
    server = serve_metrics("127.0.0.1:0", new_metrics().registry)
    port = server.port
    server.close()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # would fail with EADDRINUSE if still held


def test_a_taken_port_fails_with_a_message_naming_the_key() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(UnavailableError, match=f"metrics_address {address}: cannot listen"):
            serve_metrics(address, new_metrics().registry)


@pytest.mark.parametrize("address", ["9464", "localhost", "127.0.0.1:port", "127.0.0.1:70000"])
def test_a_malformed_address_is_refused_when_the_config_loads(address: str) -> None:
    with pytest.raises(ConfigError, match="metrics_address must be HOST:PORT"):
        load_config(env={"CRCTL_METRICS_ADDRESS": address})


def test_metrics_are_off_by_default_and_take_an_ipv6_address() -> None:
    assert load_config(env={}).metrics_address == ""
    config = load_config(env={"CRCTL_METRICS_ADDRESS": "[::1]:9464"})
    assert config.metrics_address == "[::1]:9464"


def test_an_unknown_host_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"metrics_address nowhere\.invalid:9464: unknown host"):
        serve_metrics("nowhere.invalid:9464", new_metrics().registry)
