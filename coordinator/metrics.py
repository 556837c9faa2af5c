"""The coordinator's Prometheus metrics, and the HTTP endpoint that serves them.

What happened (checkpoints, restarts, rank changes) is counted from the jobs' events bus
(``JobEvents.listen(metrics.on_event)``), so no service calls into this module and what is
counted is exactly what ``WatchJob`` callers see. What *is* (agents by liveness, operations in
flight) is read at scrape time through callables, so it is never stale and nothing has to keep
it up to date. Everything lives in a registry of its own, never prometheus_client's global one:
tests, and several coordinators in one process, do not see each other's numbers.

The HTTP server answers in a thread of its own: the scrape-time callables run there, so they
must be cheap reads of in-memory state (no I/O, no awaiting)."""

from __future__ import annotations

import socket
import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from crctl.config import host_and_port
from crctl.errors import ConfigError, UnavailableError
from crctl.v1 import coordinator_pb2

log = structlog.get_logger()

# Checkpoints and restarts take from tens of milliseconds (a small job left running) to
# minutes (gigabytes of memory per rank); a rank's dump sits in the same range.
DURATION_BUCKETS = (
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
# Liveness states and operation kinds always reported (0 when none), so that a dashboard's
# series exist before the first agent is lost or the first restart runs.
AGENT_STATES = ("alive", "lost")
OPERATION_KINDS = ("checkpoint", "restart")

AgentStates = Callable[[], Iterable[str]]
InFlight = Callable[[], Mapping[str, int]]


class _ScrapeTimeGauges(Collector):
    """``crctl_agents{state}`` and ``crctl_operations_in_flight{kind}``, read when scraped. A
    callable that fails costs its gauge in that scrape (logged), not the whole scrape."""

    def __init__(self, agent_states: AgentStates, in_flight: InFlight) -> None:
        self._agent_states = agent_states
        self._in_flight = in_flight

    def collect(self) -> Iterator[Metric]:
        try:
            states = Tally(self._agent_states())
        except Exception:
            log.exception("metrics_gauge_failed", metric="crctl_agents")
        else:
            agents = GaugeMetricFamily(
                "crctl_agents", "Agents the coordinator knows, by liveness", labels=["state"]
            )
            for state in sorted(set(AGENT_STATES) | set(states)):
                agents.add_metric([state], states[state])
            yield agents
        try:
            running = dict(self._in_flight())
        except Exception:
            log.exception("metrics_gauge_failed", metric="crctl_operations_in_flight")
        else:
            operations = GaugeMetricFamily(
                "crctl_operations_in_flight",
                "Checkpoints and restarts under way now",
                labels=["kind"],
            )
            for kind in sorted(set(OPERATION_KINDS) | set(running)):
                operations.add_metric([kind], running.get(kind, 0))
            yield operations


class CoordinatorMetrics:
    """The coordinator's metrics in their own registry. ``on_event`` is the events bus's
    listener; ``agent_states`` gives every known agent's state ("alive" | "lost"),
    ``in_flight`` the operations under way by kind ("checkpoint", "restart")."""

    def __init__(self, *, agent_states: AgentStates, in_flight: InFlight) -> None:
        # No *_created series beside every counter and histogram: noise for a scraper that
        # sees the coordinator's start in process_start_time_seconds anyway.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        r = self.registry
        self._checkpoints = Counter(
            "crctl_checkpoints",
            "Checkpoints finished, by outcome",
            ["outcome"],
            registry=r,
        )
        self._checkpoint_duration = Histogram(
            "crctl_checkpoint_duration_seconds",
            "A committed checkpoint's time from its start to its outcome",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._checkpoint_frozen = Histogram(
            "crctl_checkpoint_frozen_seconds",
            "The longest any host's ranks stood frozen in a committed checkpoint",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._bytes_written = Counter(
            "crctl_checkpoint_bytes_written",
            "Image bytes of committed checkpoints (every rank's)",
            registry=r,
        )
        self._rank_dump = Histogram(
            "crctl_rank_dump_seconds",
            "A rank's dump in a committed checkpoint: from the order to its images written",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._restarts = Counter(
            "crctl_restarts",
            "Restarts finished, by outcome",
            ["outcome"],
            registry=r,
        )
        self._restart_duration = Histogram(
            "crctl_restart_duration_seconds",
            "A successful restart's time from its start to its ranks running",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._rank_events = Counter(
            "crctl_rank_events",
            "Ranks that changed state (started or restored, exited, killed, checkpointed, lost)",
            ["state"],
            registry=r,
        )
        for outcome in ("committed", "aborted"):
            self._checkpoints.labels(outcome)
        for outcome in ("restarted", "aborted"):
            self._restarts.labels(outcome)
        r.register(_ScrapeTimeGauges(agent_states, in_flight))

    def on_event(self, event: coordinator_pb2.JobEvent) -> None:
        """Count one job event (the events bus calls this synchronously; it never blocks)."""
        kind = event.WhichOneof("event")
        if kind == "checkpoint_outcome":
            self._checkpoint_finished(event.checkpoint_outcome)
        elif kind == "restart_outcome":
            self._restart_finished(event.restart_outcome)
        elif kind == "rank":
            self._rank_events.labels(event.rank.state or "unknown").inc()

    def _checkpoint_finished(self, outcome: coordinator_pb2.CheckpointOutcome) -> None:
        if not outcome.committed:
            # An aborted checkpoint's time is mostly a deadline and its images are gone.
            self._checkpoints.labels("aborted").inc()
            return
        self._checkpoints.labels("committed").inc()
        self._checkpoint_duration.observe(outcome.duration_seconds)
        self._checkpoint_frozen.observe(outcome.frozen_seconds)
        self._bytes_written.inc(sum(rank.bytes for rank in outcome.ranks))
        for rank in outcome.ranks:
            self._rank_dump.observe(rank.dump_seconds)

    def _restart_finished(self, outcome: coordinator_pb2.RestartOutcome) -> None:
        if not outcome.restarted:
            self._restarts.labels("aborted").inc()
            return
        self._restarts.labels("restarted").inc()
        self._restart_duration.observe(outcome.duration_seconds)


@dataclass
class MetricsServer:
    """The HTTP endpoint serving a registry (GET /metrics, in a thread of its own)."""

    address: str
    port: int  # the port it listens on (the one chosen when asked for port 0)
    _server: WSGIServer
    _thread: threading.Thread

    def close(self) -> None:
        """Stop answering and release the port (blocks up to half a second)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def serve_metrics(address: str, registry: CollectorRegistry) -> MetricsServer:
    """Serve ``registry`` over HTTP at ``address`` (HOST:PORT). A malformed address or an
    unknown host is a ConfigError; one that cannot be bound (taken, not this machine's) an
    UnavailableError; both name metrics_address."""
    host, port = host_and_port(address, "metrics_address")
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except socket.gaierror as exc:
        raise ConfigError(
            f"metrics_address {address}: unknown host {host!r} ({exc.strerror})"
        ) from None
    except OSError as exc:
        raise UnavailableError(
            f"metrics_address {address}: cannot listen there ({exc.strerror}); "
            'choose a free port or set metrics_address to "" to serve no metrics'
        ) from None
    bound = server.server_port
    log.info("metrics_serving", address=address, port=bound, path="/metrics")
    return MetricsServer(address=address, port=bound, _server=server, _thread=thread)
