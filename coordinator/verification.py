"""Verifying a committed checkpoint against its manifest without restoring it (``crctl
verify``): the files a restart would check, with the same digests (crctl.digests). The
coordinator owns the checkpoint store and reads the images itself, in a worker thread, so
that its event loop keeps serving agents and callers meanwhile."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import structlog

from coordinator.store import CheckpointRecord
from crctl import digests
from crctl.clock import Clock
from crctl.v1 import coordinator_pb2

log = structlog.get_logger()


@dataclass(frozen=True, kw_only=True)
class Verification:
    job: str
    checkpoint: str
    directory: Path
    files: int  # in the manifest
    bytes: int  # their recorded sizes
    problems: tuple[digests.Problem, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.problems


def manifest_files(manifest: coordinator_pb2.Manifest) -> list[digests.FileDigest]:
    """Every file of every rank, its path relative to the checkpoint's folder."""
    return [digests.FileDigest.from_proto(f) for rank in manifest.ranks for f in rank.files]


async def verify_checkpoint(
    record: CheckpointRecord, manifest: coordinator_pb2.Manifest, clock: Clock
) -> Verification:
    """What differs between the checkpoint's folder and its manifest (files missing, of
    another size or digest); files beside the images (CRIU's logs) are not in it and ignored."""
    started = clock.monotonic()
    expected = manifest_files(manifest)
    directory = Path(record.directory)
    problems = await asyncio.to_thread(digests.verify, directory, expected)
    verification = Verification(
        job=record.job,
        checkpoint=record.checkpoint,
        directory=directory,
        files=len(expected),
        bytes=sum(f.size for f in expected),
        problems=tuple(problems),
        seconds=clock.monotonic() - started,
    )
    report = log.info if verification.ok else log.warning
    report(
        "checkpoint_verified",
        job=record.job,
        checkpoint=record.checkpoint,
        ok=verification.ok,
        files=verification.files,
        problems=[str(p) for p in problems],
        seconds=round(verification.seconds, 4),
    )
    return verification
