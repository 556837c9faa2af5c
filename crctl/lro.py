"""Long-running operations as both sides read them (google.longrunning): names, and a finished
operation's outcome."""

from __future__ import annotations

from typing import TypeVar

from google.longrunning import operations_pb2
from google.protobuf.message import Message

PREFIX = "operations/"
Outcome = TypeVar("Outcome", bound=Message)


def operation_name(run_id: str) -> str:
    """The operation of a checkpoint or restart (``ckpt-…``, ``rst-…``); a full name as is."""
    return run_id if run_id.startswith(PREFIX) else PREFIX + run_id


def outcome_of(operation: operations_pb2.Operation, outcome: Outcome) -> Outcome:
    """A finished operation's outcome, into ``outcome``: its response, or the one its error's
    details carry after the ErrorInfo."""
    if operation.HasField("response"):
        operation.response.Unpack(outcome)
    for detail in operation.error.details:
        detail.Unpack(outcome)  # only the detail of the outcome's own type unpacks
    return outcome
