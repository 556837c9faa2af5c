"""Following a checkpoint or a restart to its outcome, through a dropped link or a coordinator
restart.

The CLI streams the run's progress (one line per phase or step). If the link drops once the
stream named the run, it reattaches to the run's long-running operation (``operations/<id>``),
which the coordinator keeps in its database and finishes even after a restart of its own, and
waits on it until it is done; it gives up after ``retry_for`` seconds of not reaching the
coordinator. A coordinator never reached is an error at once, and so is an answer of the
coordinator's own (an agent it lost is UNAVAILABLE too, but no reason to wait). The request id
the CLI sends makes a retry by hand (``--request-id``) follow the same run, never start another."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from google.protobuf.message import Message

from cli.client import CoordinatorClient
from crctl.errors import ConfigError, CoordinatorUnreachableError
from crctl.lro import operation_name, outcome_of

Event = TypeVar("Event", bound=Message)
Outcome = TypeVar("Outcome", bound=Message)

RETRY_FOR = 60.0  # seconds of not reaching the coordinator before giving up
WAIT_STEP = 20.0  # seconds per WaitOperation call
RETRY_PAUSE = 1.0


def follow(
    client: CoordinatorClient,
    stream: Callable[[], Iterator[Event]],
    *,
    run_id: Callable[[Event], str],
    outcome: Callable[[Event], Outcome | None],
    empty: Callable[[], Outcome],
    progress: Callable[[Event], None],
    retry_for: float = RETRY_FOR,
) -> Outcome:
    """The outcome of the run ``stream()`` starts (or, with its request id, finds again)."""
    name = ""
    try:
        for event in stream():
            progress(event)
            name = name or operation_name(run_id(event))
            found = outcome(event)
            if found is not None:
                return found
    except CoordinatorUnreachableError:
        if not name:
            raise
        print(f"crctl: lost the coordinator; reattaching to {name}", file=sys.stderr)
    else:
        raise ConfigError("the coordinator ended the stream without an outcome")
    return _wait(client, name, empty(), retry_for)


def _wait(client: CoordinatorClient, name: str, outcome: Outcome, retry_for: float) -> Outcome:
    """The outcome of operation ``name``, waiting through the coordinator's absence."""
    unreachable_since: float | None = None
    while True:
        try:
            operation = client.wait_operation(name, WAIT_STEP)
        except CoordinatorUnreachableError:
            now = time.monotonic()
            unreachable_since = unreachable_since or now
            if now - unreachable_since > retry_for:
                raise
            time.sleep(RETRY_PAUSE)
            continue
        unreachable_since = None
        if operation.done:
            return outcome_of(operation, outcome)
