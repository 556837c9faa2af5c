"""Jobs' events, as they happen: ranks started, exited or lost, checkpoint and restart phases
and outcomes, schedule changes. The services publish; ``WatchJob`` callers (one job each) and
the coordinator's own listeners (metrics: every job) subscribe.

Publishing never blocks and never fails: each subscriber has a bounded queue, and one that
falls that far behind is dropped (its stream ends with a reason) rather than slowing the
coordinator or growing without bound."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import structlog

from crctl.clock import Clock
from crctl.errors import UnavailableError
from crctl.v1 import coordinator_pb2

log = structlog.get_logger()

QUEUE_LIMIT = 10_000
Listener = Callable[[coordinator_pb2.JobEvent], None]


@dataclass(eq=False)
class Subscription:
    """One watcher's queue; ``overflowed`` once it fell QUEUE_LIMIT events behind."""

    job: str | None  # None: every job
    queue: asyncio.Queue[coordinator_pb2.JobEvent] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_LIMIT)
    )
    overflowed: bool = False

    def offer(self, event: coordinator_pb2.JobEvent) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
            # Wake the reader so that it sees the overflow and ends its stream.
            self.queue.get_nowait()
            self.queue.put_nowait(coordinator_pb2.JobEvent(job=self.job or ""))


class JobEvents:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._subscriptions: set[Subscription] = set()
        self._listeners: list[Listener] = []

    def listen(self, listener: Listener) -> None:
        """Call ``listener`` synchronously with every event of every job (it must not block;
        an exception it raises is logged and swallowed)."""
        self._listeners.append(listener)

    def stamp(self, job: str, event: coordinator_pb2.JobEvent, operation: str = "") -> None:
        """Set the event's time, job and operation."""
        event.job = job
        if operation:
            event.operation = operation
        event.time.FromNanoseconds(int(self._clock.now() * 1e9))

    def publish(self, job: str, event: coordinator_pb2.JobEvent, *, operation: str = "") -> None:
        """Stamp ``event`` and hand it to every listener and every subscriber of ``job``."""
        self.stamp(job, event, operation)
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # a listener's bug must not break the publisher
                log.exception("job_event_listener_failed", job=job)
        for subscription in self._subscriptions:
            if subscription.job in (None, job):
                subscription.offer(event)

    def subscribe(self, job: str | None) -> Subscription:
        subscription = Subscription(job)
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    async def follow(
        self, subscription: Subscription, first: coordinator_pb2.JobEvent | None = None
    ) -> AsyncIterator[coordinator_pb2.JobEvent]:
        """``first`` (the job's snapshot, taken after subscribing so that nothing falls in
        between), then the subscription's events until it overflows (UnavailableError) or
        the caller stops; unsubscribes at the end."""
        try:
            if first is not None:
                yield first
            while True:
                event = await subscription.queue.get()
                if subscription.overflowed and subscription.queue.empty():
                    raise UnavailableError(
                        f"the watch of {subscription.job} fell {QUEUE_LIMIT} events behind "
                        "and was ended; watch again (the first event is the job's state)",
                        job=subscription.job,
                    )
                yield event
        finally:
            self.unsubscribe(subscription)


# --- the events the services publish ---------------------------------------------------------


def rank_changed(
    rank: int,
    host: str,
    pid: int,
    state: str,
    *,
    exit_status: int | None = None,
    reason: str = "",
) -> coordinator_pb2.JobEvent:
    event = coordinator_pb2.JobEvent()
    event.rank.rank = rank
    event.rank.host = host
    event.rank.pid = pid
    event.rank.state = state
    event.rank.reason = reason
    if exit_status is not None:
        event.rank.exit_status = exit_status
    return event
