"""`crctl operations [ID]`: the coordinator's long-running operations (every checkpoint and
restart): list them, show one, wait for it, cancel it, forget it."""

from __future__ import annotations

import argparse
import sys

from google.longrunning import operations_pb2
from google.protobuf.message import Message

from cli import render
from cli.arguments import seconds
from cli.client import CoordinatorClient
from cli.exit_codes import ExitCode
from crctl.config import Config
from crctl.lro import operation_name
from crctl.status import error_from_status
from crctl.v1 import coordinator_pb2


def _metadata(
    operation: operations_pb2.Operation,
) -> coordinator_pb2.CheckpointMetadata | coordinator_pb2.RestartMetadata:
    checkpoint = coordinator_pb2.CheckpointMetadata()
    if operation.metadata.Unpack(checkpoint):
        return checkpoint
    restart = coordinator_pb2.RestartMetadata()
    operation.metadata.Unpack(restart)
    return restart


def _kind(operation: operations_pb2.Operation) -> str:
    checkpoint = isinstance(_metadata(operation), coordinator_pb2.CheckpointMetadata)
    return "checkpoint" if checkpoint else "restart"


def _state(operation: operations_pb2.Operation) -> str:
    """running (phase), done, or the error's short form."""
    metadata = _metadata(operation)
    where = (
        metadata.phase
        if isinstance(metadata, coordinator_pb2.CheckpointMetadata)
        else metadata.step
    )
    if not operation.done:
        return f"running ({where})" + (", cancel asked" if metadata.cancel_requested else "")
    if operation.HasField("response"):
        return "done"
    error = error_from_status(operation.error)
    reason = "cancelled" if operation.error.code == 1 else "aborted"
    return f"{reason} in {where}" if error is not None else f"failed: {operation.error.message}"


def _row(operation: operations_pb2.Operation) -> list[object]:
    metadata = _metadata(operation)
    return [
        operation.name.removeprefix("operations/"),
        _kind(operation),
        metadata.job,
        _state(operation),
        metadata.started_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
        metadata.requested_by,
    ]


def _show(operation: operations_pb2.Operation) -> None:
    metadata = _metadata(operation)
    print(f"{operation.name}: {_kind(operation)} of {metadata.job}, {_state(operation)}")
    print(
        f"  requested by {metadata.requested_by or '?'} at "
        f"{metadata.started_at.ToDatetime():%Y-%m-%d %H:%M:%S} UTC"
    )
    for host in metadata.hosts:
        why = f" ({host.reason})" if host.reason else ""
        print(f"  {host.host}: {host.state}{why}")
    if operation.done and operation.HasField("error"):
        print(f"  error: {operation.error.message}")
        error = error_from_status(operation.error)
        if error is not None and error.fields():
            print("  " + " ".join(f"{k}={v}" for k, v in error.fields().items()))
    elif operation.done:
        outcome: Message
        if isinstance(metadata, coordinator_pb2.CheckpointMetadata):
            outcome = coordinator_pb2.CheckpointOutcome()
            operation.response.Unpack(outcome)
            size = sum(r.bytes for r in outcome.ranks)
            print(
                f"  committed {outcome.checkpoint}: {len(outcome.ranks)} ranks, "
                f"{size / 2**20:.1f} MiB in {outcome.duration_seconds:.2f}s"
            )
        else:
            outcome = coordinator_pb2.RestartOutcome()
            operation.response.Unpack(outcome)
            placed = ", ".join(f"{r.rank}@{r.host}" for r in outcome.ranks)
            took = f"{outcome.duration_seconds:.2f}s"
            print(f"  restarted from {outcome.checkpoint} in {took}: {placed}")


def cmd_operations(args: argparse.Namespace, config: Config) -> int:
    with CoordinatorClient.for_config(config) as client:
        if not args.id:
            terms = [f"job={args.job}"] if args.job else []
            if args.running:
                terms.append("done=false")
            found = client.operations(" ".join(terms))
            if args.json:
                render.print_json([render.to_dict(o) for o in found])
            else:
                render.print_table(
                    ["operation", "kind", "job", "state", "started", "by"],
                    [_row(o) for o in found],
                )
            return ExitCode.OK
        name = operation_name(args.id)
        if args.cancel:
            client.cancel_operation(name)
            print(f"cancel asked for {name}", file=sys.stderr)
        if args.delete:
            client.delete_operation(name)
            print(f"deleted {name}")
            return ExitCode.OK
        operation = client.wait_operation(name, args.wait) if args.wait else client.operation(name)
    if args.json:
        render.print_json(render.to_dict(operation))
    else:
        _show(operation)
    if args.wait and operation.done and operation.HasField("error"):
        return ExitCode.ABORTED  # waited for: its outcome is the exit status, as checkpoint's
    return ExitCode.OK


def register(add: render.AddCommand) -> None:
    p = add(
        "operations", cmd_operations, "list checkpoint and restart operations, or show one", True
    )
    p.add_argument("id", nargs="?", default="", help="an operation (ckpt-... or rst-...)")
    p.add_argument("--job", default="", help="only this job's operations")
    p.add_argument("--running", action="store_true", help="only operations still running")
    p.add_argument(
        "--wait",
        type=seconds,
        default=0.0,
        metavar="SECONDS",
        help="wait up to this long for the operation to finish (then exit 7 if it "
        "ended aborted or cancelled)",
    )
    p.add_argument(
        "--cancel",
        action="store_true",
        help="ask the operation to stop: a checkpoint not yet decided is aborted, a "
        "restart not yet releasing its ranks is rolled back",
    )
    p.add_argument(
        "--delete",
        action="store_true",
        help="forget a finished operation (its checkpoint or restart stays)",
    )
