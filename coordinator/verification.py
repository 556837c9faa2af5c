"""Verifying a committed checkpoint against its manifest without restoring it (``crctl
verify``): the files a restart would check, with the same digests (crctl.digests). The
coordinator reads the images it sees itself (a shared store), in a worker thread, so that its
event loop keeps serving agents and callers meanwhile; a rank whose images are only in
node-local stores is verified by a live host that holds them (each copy is its host's to
read). A rank no live holder can be asked for is reported unreachable, not damaged."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from coordinator.control import Plane
from coordinator.image_copies import holders, live_holders
from coordinator.store import AgentRecord, CheckpointRecord
from crctl import digests
from crctl.clock import Clock
from crctl.errors import CrctlError
from crctl.v1 import control_pb2, coordinator_pb2

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

    @property
    def damaged(self) -> bool:
        """A rank none of whose copies is intact (not merely out of reach)."""
        return any(p.kind not in ("unreachable", "copy") for p in self.problems)


def manifest_files(manifest: coordinator_pb2.Manifest) -> list[digests.FileDigest]:
    """Every file of every rank, its path relative to the checkpoint's folder."""
    return [digests.FileDigest.from_proto(f) for rank in manifest.ranks for f in rank.files]


VERIFY_TIMEOUT = 600.0


async def _on_holders(
    record: CheckpointRecord,
    ranks: Sequence[control_pb2.RankImage],
    plane: Plane,
    agents: Mapping[str, AgentRecord],
) -> list[digests.Problem]:
    """The ranks verified on their holders: each by the first live one holding it, then, for a
    rank whose copy there differs, by the next. A rank with one intact copy is restorable: the
    other copies' problems are reported as such (kind "copy"), not as damage."""
    problems: list[digests.Problem] = []
    remaining = {image.rank: live_holders(image, agents) for image in ranks}
    images = {image.rank: image for image in ranks}
    for rank, live in remaining.items():
        if not live:
            where = ", ".join(holders(images[rank]))
            problems.append(
                digests.Problem(f"rank-{rank}", "unreachable", f"only on {where}, not alive now")
            )
    found: dict[int, list[digests.Problem]] = {}  # each rank's problems on the copies tried
    intact: set[int] = set()
    todo = [rank for rank, live in remaining.items() if live]
    while todo:
        by_host: dict[str, list[int]] = {}
        for rank in todo:
            by_host.setdefault(remaining[rank].pop(0), []).append(rank)
        answers = await asyncio.gather(
            *(_ask(record, host, [images[r] for r in rs], plane) for host, rs in by_host.items())
        )
        todo = []
        for asked, answer in zip(by_host.values(), answers, strict=True):
            for rank in asked:
                bad = [p for p in answer if p.path.split("/", 1)[0] == f"rank-{rank}"]
                if not bad:
                    intact.add(rank)
                    continue
                found.setdefault(rank, []).extend(bad)
                if remaining[rank]:
                    todo.append(rank)
    for rank, bad in found.items():
        if rank in intact:  # restorable from another copy: these copies are what is wrong
            bad = [digests.Problem(p.path, "copy", p.detail) for p in bad]
        problems.extend(bad)
    return problems


async def _ask(
    record: CheckpointRecord,
    host: str,
    images: list[control_pb2.RankImage],
    plane: Plane,
) -> list[digests.Problem]:
    """One host's copy of ``images`` verified there; unreachable ones as problems."""
    order = control_pb2.CoordinatorMessage()
    body = order.verify_images
    body.job, body.checkpoint, body.checkpoint_dir = record.job, record.checkpoint, record.directory
    body.ranks.extend(images)
    try:
        reply = await plane.request(host, order, VERIFY_TIMEOUT)
    except CrctlError as exc:
        return [digests.Problem(f"rank-{i.rank}", "unreachable", f"{host}: {exc.message}")
                for i in images]  # fmt: skip
    if reply.WhichOneof("body") != "images_verified":
        why = reply.order_failed.reason or "unexpected reply"
        return [digests.Problem(f"rank-{i.rank}", "unreachable", f"{host}: {why}")
                for i in images]  # fmt: skip
    return [
        digests.Problem(p.path, p.kind, f"{p.detail} (on {host})")  # type: ignore[arg-type]
        for p in reply.images_verified.problems
    ]


async def verify_checkpoint(
    record: CheckpointRecord,
    manifest: coordinator_pb2.Manifest,
    clock: Clock,
    *,
    plane: Plane | None = None,
    agents: Mapping[str, AgentRecord] | None = None,
) -> Verification:
    """What differs between the checkpoint's images and its manifest (files missing, of
    another size or digest); files beside the images (CRIU's logs) are not in it and ignored.
    Ranks whose folder the coordinator does not see are verified on their holders."""
    started = clock.monotonic()
    expected = manifest_files(manifest)
    directory = Path(record.directory)
    here, elsewhere = list(manifest.ranks), []
    if plane is not None and agents is not None:  # else every rank is read here
        seen = [(directory / f"rank-{r.rank}").is_dir() for r in manifest.ranks]
        here = [r for r, is_here in zip(manifest.ranks, seen, strict=True) if is_here]
        elsewhere = [r for r, is_here in zip(manifest.ranks, seen, strict=True) if not is_here]
    local = [digests.FileDigest.from_proto(f) for r in here for f in r.files]
    problems = await asyncio.to_thread(digests.verify, directory, local)
    if elsewhere:
        assert plane is not None and agents is not None
        problems += await _on_holders(record, elsewhere, plane, agents)
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
