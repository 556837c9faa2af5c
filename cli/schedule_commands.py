"""`crctl schedule`: periodic checkpoints the coordinator takes by itself, and how a schedule
reads in `crctl status`."""

from __future__ import annotations

import argparse
import uuid

from google.protobuf.timestamp_pb2 import Timestamp

from cli import render
from cli.arguments import between, duration, format_duration
from cli.client import CoordinatorClient
from cli.exit_codes import ExitCode
from crctl.config import Config
from crctl.errors import ConfigError
from crctl.limits import MAX_KEEP
from crctl.v1 import coordinator_pb2


def _when(stamp: Timestamp) -> str:
    return stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")


def describe(schedule: coordinator_pb2.Schedule) -> str:
    """One line: "every 2s, keeping 2, leave-running; next 2025-01-01 12:00:02; last
    committed ckpt-... at 2025-01-01 12:00:00" (or "no periodic checkpoints")."""
    if schedule.every_seconds <= 0:
        return "no periodic checkpoints"
    keep = f"keeping {schedule.keep}" if schedule.keep else "keeping the coordinator's default"
    mode = "stop" if schedule.stop else "leave-running"
    text = f"every {format_duration(schedule.every_seconds)}, {keep}, {mode}"
    if schedule.HasField("next_at"):
        text += f"; next {_when(schedule.next_at)}"
    if schedule.last_outcome:
        last = schedule.last_outcome
        if schedule.last_checkpoint and not last.startswith("skipped"):
            last += f" {schedule.last_checkpoint}"
        if schedule.HasField("last_at"):
            last += f" at {_when(schedule.last_at)}"
        text += f"; last {last}"
    return text


def cmd_schedule(args: argparse.Namespace, config: Config) -> int:
    if args.off and (args.keep or args.stop):
        raise ConfigError("--off switches the schedule off: give it without --keep or --stop")
    with CoordinatorClient.for_config(config) as client:
        schedule = client.set_schedule(
            args.job,
            every=0.0 if args.off else args.every,
            keep=args.keep,
            stop=args.stop,
            request_id=uuid.uuid4().hex,
        )
    if args.json:
        render.print_json(render.to_dict(schedule))
    else:
        print(f"{args.job}: {describe(schedule)}")
    return ExitCode.OK


def register(add: render.AddCommand) -> None:
    p = add("schedule", cmd_schedule, "checkpoint a job periodically, or stop doing so", True)
    p.add_argument("job")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument(
        "--every",
        type=duration,
        metavar="DURATION",
        help="interval: 90s, 2m, 1h30m, 1d or seconds (at least 1s)",
    )
    when.add_argument("--off", action="store_true", help="no more periodic checkpoints")
    p.add_argument(
        "--keep",
        type=between(1, MAX_KEEP),
        default=0,
        metavar="N",
        help="keep the job's newest N checkpoints, pinned ones besides "
        "(default: retain_checkpoints)",
    )
    p.add_argument(
        "--stop",
        action="store_true",
        help="its checkpoints stop the job (default: the job keeps running)",
    )
