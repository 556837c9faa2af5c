"""A scheduler's client of crctl: checkpoint a job, then restart it on other hosts.

It needs nothing of crctl but its generated stubs (crctl/v1, importable: PYTHONPATH=the
checkout, or crctl installed): grpcio, and the standard google.longrunning and google.rpc
messages of googleapis-common-protos. Copy it and adapt.

    python examples/scheduler_client.py JOB --map h1=h4,h2=h5   # checkpoint, move h1->h4, h2->h5
    python examples/scheduler_client.py JOB --hosts h4,h5       # ... onto h4, h5 in rank order
    python examples/scheduler_client.py JOB [--leave-running]   # only checkpoint it

--address HOST:PORT (with --tls-ca, --tls-cert, --tls-key: the coordinator serves TCP only with
mutual TLS) calls a coordinator elsewhere. Exit 0 when everything asked for succeeded, else 1
with one line on stderr (the coordinator's ErrorInfo reason and metadata in brackets).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import any_pb2, duration_pb2, text_format
from google.rpc import code_pb2, error_details_pb2, status_pb2

from crctl.v1 import coordinator_pb2, coordinator_pb2_grpc

WAIT_SECONDS = 30  # one WaitOperation call returns after this at the latest; then call again
ATTEMPTS = 5  # calls refused with UNAVAILABLE (coordinator restarting) are tried again


class Failed(Exception):
    """Why the client stops: one line."""


def error_info(details: Iterable[any_pb2.Any]) -> str:
    """The ErrorInfo among a google.rpc.Status's details: ' [REASON key=value ...]'."""
    for detail in details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):  # False for the other details (e.g. the CheckpointOutcome)
            pairs = "".join(f" {k}={v}" for k, v in sorted(info.metadata.items()))
            return f" [{info.reason}{pairs}]"
    return ""


def call_failed(what: str, exc: grpc.RpcError) -> Failed:
    """A refused call; its google.rpc.Status travels in the grpc-status-details-bin trailer."""
    details: Iterable[any_pb2.Any] = ()
    for item in exc.trailing_metadata() or ():
        if item.key == "grpc-status-details-bin" and isinstance(item.value, bytes):
            details = status_pb2.Status.FromString(item.value).details
    return Failed(f"{what}: {exc.code().name}: {exc.details()}{error_info(details)}")


def start(what: str, call: Callable[[], operations_pb2.Operation]) -> operations_pb2.Operation:
    """Start an operation; UNAVAILABLE is retried with the same request (and request_id, so
    the coordinator never starts it twice: a retry gets the operation the first call began)."""
    for attempt in range(ATTEMPTS):
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == ATTEMPTS - 1:
                raise call_failed(what, exc) from None
            time.sleep(2**attempt)
    raise AssertionError("unreachable")


def wait(operations: operations_pb2_grpc.OperationsStub, name: str) -> operations_pb2.Operation:
    """WaitOperation until the operation is done: each call returns after WAIT_SECONDS at the
    latest (not done yet) and is made again; so is one cut short by a coordinator restart."""
    request = operations_pb2.WaitOperationRequest(
        name=name, timeout=duration_pb2.Duration(seconds=WAIT_SECONDS)
    )
    while True:
        try:
            operation: operations_pb2.Operation = operations.WaitOperation(
                request, timeout=WAIT_SECONDS + 10
            )
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise call_failed(f"waiting for {name}", exc) from None
            time.sleep(1)
            continue
        if operation.done:
            return operation
        # Not done yet: its metadata says where it is (CheckpointMetadata or RestartMetadata).
        checkpoint, restart = (
            coordinator_pb2.CheckpointMetadata(),
            coordinator_pb2.RestartMetadata(),
        )
        if operation.metadata.Unpack(checkpoint):
            say(f"{name}: {checkpoint.phase}, {len(checkpoint.hosts)} hosts")
        elif operation.metadata.Unpack(restart):
            say(f"{name}: {restart.step}, {len(restart.hosts)} hosts")


def result(
    operation: operations_pb2.Operation,
    outcome: coordinator_pb2.CheckpointOutcome | coordinator_pb2.RestartOutcome,
) -> None:
    """Fill ``outcome`` from a done operation's response, or fail with its error."""
    if operation.HasField("error"):  # a google.rpc.Status: code, message, ErrorInfo
        error = operation.error
        code = code_pb2.Code.Name(error.code)
        raise Failed(f"{operation.name}: {code}: {error.message}{error_info(error.details)}")
    if not operation.response.Unpack(outcome):
        raise Failed(f"{operation.name}: unexpected response {operation.response.type_url}")


_printing = threading.Lock()


def say(line: str) -> None:
    """One line on stdout, whole (the watch thread prints too)."""
    with _printing:
        print(line, flush=True)


def describe(event: coordinator_pb2.JobEvent) -> str:
    """An event in a few words (outcomes carry whole manifests: summed up)."""
    kind = event.WhichOneof("event")
    if kind == "snapshot":
        return f"state={event.snapshot.state} ranks={len(event.snapshot.ranks)}"
    if kind == "checkpoint_outcome":
        done = event.checkpoint_outcome
        size = sum(r.bytes for r in done.ranks)
        verdict = "committed" if done.committed else f"aborted ({done.reason})"
        return f"{done.checkpoint} {verdict}, {len(done.ranks)} ranks, {size} bytes"
    if kind == "restart_outcome":
        moved = event.restart_outcome
        placed = " ".join(f"{r.rank}@{r.host}" for r in moved.ranks)
        return f"{moved.restore} {'restarted' if moved.restarted else 'aborted'}: {placed}"
    field = getattr(event, kind) if kind else event
    return text_format.MessageToString(field, as_one_line=True)


def watch(stub: coordinator_pb2_grpc.CoordinatorStub, job: str) -> Callable[[], None]:
    """Print each of the job's events on one line, in a thread; returns what stops it."""
    events = stub.WatchJob(coordinator_pb2.WatchJobRequest(job=job))

    def follow() -> None:
        try:
            for event in events:
                stamp = event.time.ToDatetime().strftime("%H:%M:%S.%f")[:-3]
                say(f"{stamp} {job} {event.WhichOneof('event')}: {describe(event)}")
        except grpc.RpcError as exc:  # cancelled at the end; or too slow (UNAVAILABLE)
            if exc.code() != grpc.StatusCode.CANCELLED:
                say(f"watch of {job} ended: {exc.code().name}: {exc.details()}")

    def stop() -> None:
        events.cancel()  # type: ignore[no-untyped-call]  # (grpc-stubs leaves it untyped)

    threading.Thread(target=follow, name=f"watch-{job}", daemon=True).start()
    return stop


def run(args: argparse.Namespace, channel: grpc.Channel) -> None:
    stub = coordinator_pb2_grpc.CoordinatorStub(channel)
    operations = operations_pb2_grpc.OperationsStub(channel)  # type: ignore[no-untyped-call]
    stop_watching = watch(stub, args.job)
    try:
        request = coordinator_pb2.CheckpointRequest(
            job=args.job, leave_running=args.leave_running, request_id=f"sched-{uuid.uuid4()}"
        )
        operation = start(f"checkpoint of {args.job}", lambda: stub.StartCheckpoint(request))
        say(f"checkpointing {args.job}: {operation.name}")
        checkpoint = coordinator_pb2.CheckpointOutcome()
        result(wait(operations, operation.name), checkpoint)
        size = sum(rank.bytes for rank in checkpoint.ranks)
        say(
            f"committed {checkpoint.checkpoint}: {size} bytes in "
            f"{checkpoint.duration_seconds:.2f}s, frozen {checkpoint.frozen_seconds:.3f}s"
        )
        if args.host_map is None and args.hosts is None:
            return
        if args.leave_running:  # a restart needs the job stopped: its ranks go now
            kill = coordinator_pb2.KillJobRequest(job=args.job, request_id=f"sched-{uuid.uuid4()}")
            try:
                stub.KillJob(kill, timeout=60)
            except grpc.RpcError as exc:
                raise call_failed(f"kill of {args.job}", exc) from None
        restart = coordinator_pb2.RestartRequest(
            job=args.job,
            checkpoint=checkpoint.checkpoint,
            host_map=args.host_map or {},
            hosts=args.hosts or [],
            request_id=f"sched-{uuid.uuid4()}",
        )
        operation = start(f"restart of {args.job}", lambda: stub.StartRestart(restart))
        say(f"restarting {args.job} from {checkpoint.checkpoint}: {operation.name}")
        restarted = coordinator_pb2.RestartOutcome()
        result(wait(operations, operation.name), restarted)
        say(f"restarted {args.job} in {restarted.duration_seconds:.2f}s:")
        for rank in sorted(restarted.ranks, key=lambda r: r.rank):
            say(f"  rank {rank.rank} on {rank.host} (pid {rank.pid}, {rank.state})")
    finally:
        stop_watching()


def host_map(text: str) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in text.split(",") if item]
    if not pairs or any(len(p) != 2 or not all(p) for p in pairs):
        raise argparse.ArgumentTypeError(f"expected OLD=NEW[,OLD=NEW...], not {text!r}")
    return {old: new for old, new in pairs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("job")
    move = parser.add_mutually_exclusive_group()
    move.add_argument("--map", dest="host_map", type=host_map, help="old=new hosts, e.g. h1=h4")
    move.add_argument("--hosts", type=lambda t: t.split(","), help="new hosts in rank order")
    parser.add_argument(
        "--leave-running",
        action="store_true",
        help="the ranks run on after the checkpoint (with a move: until it is killed for it)",
    )
    parser.add_argument("--address", default="unix:/run/crctl/api.sock")
    for name in ("ca", "cert", "key"):
        parser.add_argument(f"--tls-{name}", help="for a TCP --address: mutual TLS")
    args = parser.parse_args()
    if args.address.startswith("unix:"):
        channel = grpc.insecure_channel(args.address)  # the kernel tells who calls
    elif args.tls_ca and args.tls_cert and args.tls_key:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(args.tls_ca).read_bytes(),
            private_key=Path(args.tls_key).read_bytes(),
            certificate_chain=Path(args.tls_cert).read_bytes(),
        )
        channel = grpc.secure_channel(args.address, credentials)
    else:
        parser.error("a TCP --address needs --tls-ca, --tls-cert and --tls-key")
    try:
        with channel:
            run(args, channel)
    except Failed as failure:
        print(f"scheduler_client: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
