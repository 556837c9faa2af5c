"""`crctl checkpoint | checkpoints | verify`: the two-phase checkpoint, as batch scripts drive
it, and what it left."""

from __future__ import annotations

import argparse
import sys
import uuid

from cli import render
from cli.arguments import between, seconds
from cli.client import CoordinatorClient
from cli.exit_codes import ExitCode
from cli.follow import follow
from crctl.config import Config
from crctl.v1 import coordinator_pb2


def _progress(event: coordinator_pb2.CheckpointEvent, quiet: bool) -> None:
    if quiet:
        return
    kind = event.WhichOneof("event")
    if kind == "phase":
        hosts = f" on {', '.join(event.phase.hosts)}" if event.phase.hosts else ""
        print(f"{event.phase.checkpoint}: {event.phase.phase}{hosts}", file=sys.stderr)
    elif kind == "vote":
        vote = "yes" if event.vote.yes else f"no ({event.vote.reason})"
        print(f"  {event.vote.host} voted {vote}", file=sys.stderr)


def _checkpoint_of(event: coordinator_pb2.CheckpointEvent) -> str:
    kind = event.WhichOneof("event")
    return getattr(event, kind).checkpoint if kind else ""


def cmd_checkpoint(args: argparse.Namespace, config: Config) -> int:
    request_id = args.request_id or uuid.uuid4().hex
    with CoordinatorClient.for_config(config) as client:
        outcome = follow(
            client,
            lambda: client.checkpoint(
                args.job,
                leave_running=args.leave_running,
                timeout=args.timeout,
                request_id=request_id,
                external=args.external,
            ),
            run_id=_checkpoint_of,
            outcome=lambda e: e.outcome if e.WhichOneof("event") == "outcome" else None,
            empty=coordinator_pb2.CheckpointOutcome,
            progress=lambda e: _progress(e, args.json),
        )
    if args.json:
        render.print_json(
            {
                "job": args.job,
                "checkpoint": outcome.checkpoint,
                "committed": outcome.committed,
                "reason": outcome.reason,
                "failed_host": outcome.failed_host,
                "duration_seconds": round(outcome.duration_seconds, 3),
                "frozen_seconds": round(outcome.frozen_seconds, 3),
                "ranks": [
                    {"rank": r.rank, "host": r.host, "bytes": r.bytes} for r in outcome.ranks
                ],
            }
        )
    elif outcome.committed:
        size = sum(r.bytes for r in outcome.ranks)
        print(
            f"committed {outcome.checkpoint} of {args.job}: {len(outcome.ranks)} ranks, "
            f"{size / 2**20:.1f} MiB in {outcome.duration_seconds:.2f}s"
            + (f" ({outcome.reason})" if outcome.reason else "")
        )
    if not outcome.committed:
        print(
            f"crctl: checkpoint {outcome.checkpoint} of {args.job} aborted: {outcome.reason}; "
            "the job keeps running and the previous checkpoint stays the latest",
            file=sys.stderr,
        )
        return ExitCode.ABORTED
    if args.requeue_exit_code is not None:
        if args.leave_running:
            return ExitCode.OK
        return int(args.requeue_exit_code)
    return ExitCode.OK


def cmd_checkpoints(args: argparse.Namespace, config: Config) -> int:
    if args.pin or args.unpin:
        return _pin(args, config)
    with CoordinatorClient.for_config(config) as client:
        checkpoints = client.checkpoints(args.job)
    if args.json:
        render.print_json([render.to_dict(c) for c in checkpoints])
        return ExitCode.OK
    render.print_table(
        [
            "checkpoint",
            "state",
            "latest",
            "pinned",
            "started",
            "ranks",
            "size",
            "images on",
            "reason",
        ],
        [
            [
                c.checkpoint,
                c.state,
                "*" if c.latest else "",
                "*" if c.pinned else "",
                c.started_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
                len(c.manifest.ranks),
                f"{sum(r.bytes for r in c.manifest.ranks) / 2**20:.1f}M",
                images_on(c.manifest),
                "; ".join(
                    filter(None, [c.reason, c.unreachable and f"not restorable: {c.unreachable}"])
                ),
            ]
            for c in checkpoints
        ],
    )
    return ExitCode.OK


def images_on(manifest: coordinator_pb2.Manifest) -> str:
    """Where a checkpoint's images are, host by host that dumped ranks: ``h1+h2`` when h2
    holds a complete copy of h1's ranks' images (a partner copy)."""
    by_host: dict[str, list[set[str]]] = {}
    for image in manifest.ranks:
        by_host.setdefault(image.host, []).append(set(image.copies))
    return " ".join(
        "+".join([host, *sorted(set.intersection(*copies))]) for host, copies in by_host.items()
    )


def _pin(args: argparse.Namespace, config: Config) -> int:
    pinned = bool(args.pin)
    checkpoint = args.pin or args.unpin
    with CoordinatorClient.for_config(config) as client:
        info = client.pin_checkpoint(args.job, checkpoint, pinned=pinned)
    if args.json:
        render.print_json(render.to_dict(info))
    elif pinned:
        print(f"pinned {info.checkpoint} of {info.job}: retention never removes it")
    else:
        print(f"unpinned {info.checkpoint} of {info.job}: retention counts it again")
    return ExitCode.OK


def _problem_kind(problem: coordinator_pb2.FileProblem) -> str:
    name = coordinator_pb2.FileProblemKind.Name(problem.kind)
    return name.removeprefix("FILE_PROBLEM_KIND_").lower()


def cmd_verify(args: argparse.Namespace, config: Config) -> int:
    with CoordinatorClient.for_config(config) as client:
        result = client.verify(args.job, args.checkpoint)
    if args.json:
        render.print_json(
            {
                "job": result.job,
                "checkpoint": result.checkpoint,
                "directory": result.directory,
                "ok": result.ok,
                "files": result.files,
                "bytes": result.bytes,
                "duration_seconds": round(result.duration_seconds, 3),
                "problems": [
                    {"path": p.path, "kind": _problem_kind(p), "detail": p.detail}
                    for p in result.problems
                ],
            }
        )
    elif result.ok:
        print(
            f"{result.checkpoint} of {result.job}: all {result.files} files "
            f"({result.bytes / 2**20:.1f} MiB) match the manifest "
            f"({result.duration_seconds:.2f}s)"
        )
    if result.ok:
        return ExitCode.OK
    if all(_problem_kind(p) in ("copy", "unreachable") for p in result.problems):
        print(
            f"crctl: checkpoint {result.checkpoint} of {result.job}: not every copy of its "
            "images could be verified (every rank that has an intact copy stays restartable):",
            file=sys.stderr,
        )
    else:
        print(
            f"crctl: checkpoint {result.checkpoint} of {result.job} does not match its manifest "
            f"({len(result.problems)} of {result.files} files):",
            file=sys.stderr,
        )
    for problem in result.problems:
        print(f"  {problem.path}: {problem.detail}", file=sys.stderr)
    return ExitCode.FAILED


def register(add: render.AddCommand) -> None:
    p = add("checkpoint", cmd_checkpoint, "checkpoint every rank of a job, consistently", True)
    p.add_argument("job")
    p.add_argument(
        "--leave-running",
        action="store_true",
        help="keep the ranks running after the checkpoint (default: they stop)",
    )
    p.add_argument(
        "--timeout",
        type=seconds,
        default=0.0,
        metavar="SECONDS",
        help="deadline of the prepare phase, in seconds above 0 (default: checkpoint_timeout)",
    )
    p.add_argument(
        "--external",
        choices=("refuse", "close"),
        default="refuse",
        help="connections to peers outside the job: refuse the checkpoint, listing them "
        "(default), or keep them and restore them closed at restart",
    )
    p.add_argument(
        "--request-id",
        default="",
        help="idempotency key: a retry with the same id never starts a second one",
    )
    p.add_argument(
        "--requeue-exit-code",
        type=between(1, 255),
        metavar="N",
        help="exit N after a committed stop-mode checkpoint (for Slurm's RequeueExit=N)",
    )
    p = add("checkpoints", cmd_checkpoints, "list a job's checkpoints, or pin one", True)
    p.add_argument("job")
    pin = p.add_mutually_exclusive_group()
    pin.add_argument(
        "--pin", metavar="ID", help="keep checkpoint ID whatever the retention (not counted in it)"
    )
    pin.add_argument("--unpin", metavar="ID", help="let retention remove checkpoint ID again")
    p = add(
        "verify",
        cmd_verify,
        "check a committed checkpoint's images against its manifest, restoring nothing",
        True,
    )
    p.add_argument("job")
    p.add_argument(
        "--checkpoint", default="", help="the checkpoint to verify (default: the job's latest)"
    )
