"""`crctl restart`: a job from a committed checkpoint, on the same or other hosts."""

from __future__ import annotations

import argparse
import sys
import uuid

from cli import render
from cli.arguments import host_map, key_value, seconds
from cli.client import CoordinatorClient
from cli.exit_codes import ExitCode
from cli.follow import follow
from crctl import hostlists
from crctl.config import Config
from crctl.v1 import coordinator_pb2


def cmd_restart(args: argparse.Namespace, config: Config) -> int:
    request = coordinator_pb2.RestartRequest(
        job=args.job,
        checkpoint=args.checkpoint,
        host_map=args.map,
        hosts=hostlists.expand(args.hosts or ""),
        plugins=args.plugin,
        plugin_options=dict(args.plugin_option),
        timeout_seconds=args.timeout,
        eager_pages=args.eager_pages,
        request_id=args.request_id or uuid.uuid4().hex,
    )

    def progress(event: coordinator_pb2.RestartEvent) -> None:
        if event.WhichOneof("event") == "step" and not args.json:
            hosts = ", ".join(event.step.hosts)
            print(f"{event.step.restore}: {event.step.step} on {hosts}", file=sys.stderr)

    with CoordinatorClient.for_config(config) as client:
        outcome = follow(
            client,
            lambda: client.restart(request),
            run_id=lambda e: (
                e.step.restore if e.WhichOneof("event") == "step" else e.outcome.restore
            ),
            outcome=lambda e: e.outcome if e.WhichOneof("event") == "outcome" else None,
            empty=coordinator_pb2.RestartOutcome,
            progress=progress,
        )
    if not args.json:
        for skipped in outcome.passed_over:
            print(
                f"crctl: passed over checkpoint {skipped.checkpoint} of {args.job}, newer than "
                f"{outcome.checkpoint}: {skipped.reason}",
                file=sys.stderr,
            )
    if args.json:
        render.print_json(render.to_dict(outcome))
    elif outcome.restarted:
        placed = ", ".join(f"{r.rank}@{r.host}" for r in outcome.ranks)
        print(
            f"restarted {args.job} from {outcome.checkpoint} in "
            f"{outcome.duration_seconds:.2f}s: {placed}"
        )
    if not outcome.restarted:
        where = f" on {outcome.failed_host}" if outcome.failed_host else ""
        rank = f", rank {outcome.failed_rank}" if outcome.failed_rank >= 0 else ""
        kept = (
            ""
            if outcome.checkpoint_damaged
            else f" and checkpoint {outcome.checkpoint} stays restartable"
        )
        print(
            f"crctl: restart of {args.job} failed{where}{rank}: {outcome.reason}; nothing "
            f"is left running{kept}",
            file=sys.stderr,
        )
        return ExitCode.FAILED
    return ExitCode.OK


def register(add: render.AddCommand) -> None:
    p = add("restart", cmd_restart, "restart a job from a checkpoint, here or on other hosts", True)
    p.add_argument("job")
    p.add_argument(
        "--checkpoint",
        default="",
        help="checkpoint id (default: the newest one every rank of which has a reachable copy)",
    )
    p.add_argument(
        "--map",
        type=host_map,
        default="",
        metavar="OLD=NEW,...",
        help="move ranks of host OLD to host NEW (unlisted hosts stay)",
    )
    p.add_argument(
        "--hosts",
        default="",
        metavar="H1,H2,...",
        help="new hosts in rank order (fewer hosts than ranks: wraps around)",
    )
    p.add_argument(
        "--eager-pages",
        action="store_true",
        help="restore every rank's memory before it runs (default: ranks run at once and "
        "their memory is copied in behind them, on hosts whose kernel can)",
    )
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE:CLASS",
        help="a restart plugin to run besides the installed ones (repeatable)",
    )
    p.add_argument(
        "--plugin-option",
        action="append",
        type=key_value,
        default=[],
        metavar="KEY=VALUE",
        help="an option for the plugins (repeatable)",
    )
    p.add_argument(
        "--timeout",
        type=seconds,
        default=0.0,
        metavar="SECONDS",
        help="deadline of each restart step, in seconds above 0 (default: checkpoint_timeout)",
    )
    p.add_argument(
        "--request-id",
        default="",
        help="idempotency key: a retry with the same id follows the restart it started "
        "(default: a new UUID)",
    )
