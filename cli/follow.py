"""Following a checkpoint or a restart to its outcome, through a dropped link or a coordinator
restart.

The CLI streams the run's progress (one line per phase or step). If the link drops, it
reattaches: once the stream named the run, it waits on the run's long-running operation
(``operations/<id>``), which the coordinator keeps in its database and finishes even after a
restart of its own; before that, it sends the same request again with the same request id,
which never starts a second run. It gives up after ``retry_for`` seconds of not reaching the
coordinator."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from google.protobuf.message import Message

from cli.client import CoordinatorClient
from crctl.errors import ConfigError, UnavailableError
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
    unreachable_since: float | None = None
    while True:
        try:
            if name:
                operation = client.wait_operation(name, WAIT_STEP)
                unreachable_since = None
                if operation.done:
                    return outcome_of(operation, empty())
                continue
            for event in stream():
                unreachable_since = None
                progress(event)
                name = name or operation_name(run_id(event))
                found = outcome(event)
                if found is not None:
                    return found
            raise ConfigError("the coordinator ended the stream without an outcome")
        except UnavailableError:
            now = time.monotonic()
            if unreachable_since is None:
                unreachable_since = now
                if name:
                    print(f"crctl: lost the coordinator; reattaching to {name}", file=sys.stderr)
            if now - unreachable_since > retry_for:
                raise
            time.sleep(RETRY_PAUSE)
