"""`crctl verify`: the coordinator checks a committed checkpoint's images against its manifest
(CheckpointService.verify, against a real store and checkpoint folders), off its event loop,
and the CLI exits 0 when every file matches, 1 naming every bad file, 4 for an unknown job or
checkpoint and 3 when the coordinator cannot be reached."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from structlog.testing import capture_logs

from cli.main import main
from coordinator.checkpoints import CheckpointService, CheckpointSettings
from coordinator.job_events import JobEvents
from coordinator.jobs import JobService
from coordinator.registry import AgentRegistry
from coordinator.storage import CheckpointStore
from coordinator.store import CheckpointRecord, RankRecord, Store
from crctl import digests
from crctl.clock import ManualClock
from crctl.errors import ConflictError, NotFoundError
from crctl.v1 import control_pb2, coordinator_pb2
from tests.unit.api_harness import call_api

JOB = "ring"
PAGES = 5 << 20  # past the threaded-hash size


class Coordinator:
    """The parts of a coordinator that verify checkpoints: state in SQLite, a checkpoint store
    in a temporary folder (no control plane: verifying asks no agent)."""

    def __init__(self, root: Path) -> None:
        self.clock = ManualClock()
        self.store = Store(":memory:")
        self.files = CheckpointStore(root / "checkpoints")
        self.jobs = jobs = JobService(
            self.store,
            AgentRegistry(self.store, self.clock, lost_after=5),
            None,  # type: ignore[arg-type]
            self.clock,
            JobEvents(self.clock),
        )
        self.service = CheckpointService(
            store=self.store,
            jobs=jobs,
            plane=None,  # type: ignore[arg-type]
            files=self.files,
            clock=self.clock,
            settings=CheckpointSettings(prepare_timeout=10, commit_timeout=5, retain=3),
        )
        for rank in (0, 1):
            self.store.add_rank(
                RankRecord(JOB, rank, f"h{rank + 1}", 100 + rank, "running", None, ("ring",)),
                self.clock.now(),
            )

    def checkpoint(
        self,
        name: str,
        *,
        line: Callable[[digests.FileDigest, str], dict[str, Any]] | None = None,
    ) -> Path:
        """A committed checkpoint of two ranks, as agents and the coordinator leave it: image
        folders, CRIU's logs beside them, manifest.json and the database's record. ``line``
        writes the manifest's lines in another form (an older crctl's)."""
        directory = self.files.create(JOB, name)
        manifest = coordinator_pb2.Manifest(checkpoint=name, job=JOB)
        for rank in (0, 1):
            folder = directory / f"rank-{rank}"
            for image, size in (("core-1.img", 900), ("files.img", 3000), ("pages-1.img", PAGES)):
                (folder / image).parent.mkdir(parents=True, exist_ok=True)
                (folder / image).write_bytes(os.urandom(size))
            (folder / "empty.img").write_bytes(b"")
            lines = digests.digest_files(folder)
            image_entry = manifest.ranks.add(rank=rank, host=f"h{rank + 1}")
            image_entry.files.extend(d.to_proto(prefix=f"rank-{rank}/") for d in lines)
            image_entry.bytes = sum(d.size for d in lines)
        (directory / "logs" / "rank-0").mkdir(parents=True)
        (directory / "logs" / "rank-0" / "dump.log").write_text("written after the manifest")
        text = self.files.write_manifest(directory, manifest)
        if line is not None:
            recorded = json.loads(text)
            for entry in recorded["ranks"]:
                entry["files"] = [
                    line(digests.FileDigest.from_proto(f), f.path)
                    for f in next(r for r in manifest.ranks if r.rank == entry["rank"]).files
                ]
            text = json.dumps(recorded)
        self.store.begin_checkpoint(
            CheckpointRecord(
                checkpoint=name,
                job=JOB,
                request_id=None,
                state="preparing",
                leave_running=True,
                directory=str(directory),
                started_at=self.clock.now(),
                finished_at=None,
                reason="",
                failed_host="",
                manifest=None,
            )
        )
        self.store.commit_checkpoint(name, JOB, text, self.clock.now(), ranks_stop=False)
        self.clock.advance(1)
        return directory

    def verify(self, job: str = JOB, checkpoint: str = "") -> Any:
        return asyncio.run(self.service.verify(job, checkpoint))


def flip_a_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def truncate(path: Path, size: int) -> None:
    with path.open("r+b") as f:
        f.truncate(size)


@pytest.fixture
def coordinator(tmp_path: Path) -> Coordinator:
    return Coordinator(tmp_path)


def test_a_committed_checkpoint_verifies_file_by_file(coordinator: Coordinator) -> None:
    """Every file of the manifest is read and matches; CRIU's logs beside the images are not
    in the manifest and do not count."""
    coordinator.checkpoint("ckpt-1")
    with capture_logs() as events:
        result = coordinator.verify()
    assert result.ok and result.problems == ()
    (event,) = [e for e in events if e["event"] == "checkpoint_verified"]
    assert (event["job"], event["checkpoint"], event["ok"]) == (JOB, "ckpt-1", True)
    assert (result.job, result.checkpoint) == (JOB, "ckpt-1")
    assert result.files == 8
    assert result.bytes == 2 * (900 + 3000 + PAGES)


def test_the_latest_checkpoint_is_verified_unless_one_is_named(coordinator: Coordinator) -> None:
    older = coordinator.checkpoint("ckpt-1")
    coordinator.checkpoint("ckpt-2")
    truncate(older / "rank-0" / "core-1.img", 0)
    assert coordinator.verify().checkpoint == "ckpt-2"
    assert coordinator.verify().ok
    result = coordinator.verify(checkpoint="ckpt-1")
    assert (result.checkpoint, result.ok) == ("ckpt-1", False)


def test_a_flipped_byte_and_a_truncated_file_are_both_named(coordinator: Coordinator) -> None:
    directory = coordinator.checkpoint("ckpt-1")
    pages = directory / "rank-1" / "pages-1.img"
    flip_a_byte(pages, PAGES // 3)
    truncate(directory / "rank-0" / "files.img", 1000)
    (directory / "rank-0" / "core-1.img").unlink()

    result = coordinator.verify()
    assert not result.ok
    assert [(p.path, p.kind) for p in result.problems] == [
        ("rank-0/core-1.img", "missing"),
        ("rank-0/files.img", "size"),
        ("rank-1/pages-1.img", "digest"),
    ]
    assert str(result.problems[1]) == "rank-0/files.img: size 1000, expected 3000"
    assert str(result.problems[2]).startswith(
        f"rank-1/pages-1.img: blake3 {digests.digest_file(pages)}, expected "
    )
    # A checkpoint found damaged is never offered again: the job has no good one left.
    assert coordinator.store.checkpoint("ckpt-1").state == "damaged"  # type: ignore[union-attr]
    assert coordinator.store.job(JOB).latest_checkpoint is None  # type: ignore[union-attr]


def test_a_checkpoint_written_before_blake3_verifies_with_its_sha256(
    coordinator: Coordinator,
) -> None:
    """Real users have checkpoints whose manifest lines hold only a sha256."""

    def old_line(digest: digests.FileDigest, path: str) -> dict[str, Any]:
        data = (coordinator.files.directory(JOB, "ckpt-old") / path).read_bytes()
        return {"path": path, "size": str(digest.size), "sha256": hashlib.sha256(data).hexdigest()}

    directory = coordinator.checkpoint("ckpt-old", line=old_line)
    manifest = json.loads(coordinator.store.checkpoint("ckpt-old").manifest)  # type: ignore[union-attr,arg-type]
    assert "digest" not in manifest["ranks"][0]["files"][0]
    assert coordinator.verify().ok

    flip_a_byte(directory / "rank-0" / "pages-1.img", 7)
    (problem,) = coordinator.verify().problems
    assert problem.path == "rank-0/pages-1.img"
    assert problem.detail.startswith("sha256 ")


def test_unknown_jobs_and_checkpoints_and_uncommitted_ones_are_refused(
    coordinator: Coordinator,
) -> None:
    with pytest.raises(NotFoundError, match="no committed checkpoint to verify"):
        coordinator.verify()
    coordinator.checkpoint("ckpt-1")
    with pytest.raises(NotFoundError, match="unknown job 'nope'"):
        coordinator.verify("nope")
    with pytest.raises(NotFoundError, match="has no checkpoint ckpt-9"):
        coordinator.verify(checkpoint="ckpt-9")
    coordinator.store.begin_checkpoint(
        CheckpointRecord("ckpt-2", JOB, None, "preparing", True, "/x", 0.0, None, "", "", None)
    )
    coordinator.store.abort_checkpoint("ckpt-2", "no vote", "h1", 1.0)
    with pytest.raises(ConflictError, match="ckpt-2 is aborted, not committed"):
        coordinator.verify(checkpoint="ckpt-2")


def test_the_coordinator_keeps_serving_while_it_hashes(coordinator: Coordinator) -> None:
    """The images are read in a worker thread: the event loop runs other tasks meanwhile."""
    coordinator.checkpoint("ckpt-1")

    async def scenario() -> tuple[int, bool]:
        turns = 0
        done = asyncio.Event()

        async def other_work() -> None:
            nonlocal turns
            while not done.is_set():
                turns += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(other_work())
        await asyncio.sleep(0)
        turns = 0
        result = await coordinator.service.verify(JOB)
        seen = turns
        done.set()
        await task
        return seen, result.ok

    turns, ok = asyncio.run(scenario())
    assert ok and turns > 0


# --- through the gRPC API and the CLI ---------------------------------------------------------


def run_cli(coordinator: Coordinator, *args: str) -> int:
    """``crctl ARGS`` against a coordinator API serving ``coordinator``'s checkpoints."""

    service = SimpleNamespace(checkpoints=coordinator.service, jobs=coordinator.jobs)
    with capture_logs():  # the coordinator's events, kept out of the CLI's output
        return call_api(service, lambda address: main([*args, "--api-address", address]))


def test_crctl_verify_exits_0_when_every_file_matches(
    coordinator: Coordinator, capsys: pytest.CaptureFixture[str]
) -> None:
    coordinator.checkpoint("ckpt-1")
    assert run_cli(coordinator, "verify", JOB) == 0
    out = capsys.readouterr().out
    assert "ckpt-1 of ring: all 8 files" in out and "match the manifest" in out


def test_crctl_verify_exits_1_naming_every_bad_file(
    coordinator: Coordinator, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = coordinator.checkpoint("ckpt-1")
    flip_a_byte(directory / "rank-1" / "pages-1.img", 12345)
    truncate(directory / "rank-0" / "files.img", 10)

    assert run_cli(coordinator, "verify", JOB, "--checkpoint", "ckpt-1") == 1
    err = capsys.readouterr().err
    assert "checkpoint ckpt-1 of ring does not match its manifest (2 of 8 files)" in err
    assert "rank-0/files.img: size 10, expected 3000" in err
    assert "rank-1/pages-1.img: blake3 " in err

    # marked damaged by the first verify: verified again by name
    assert run_cli(coordinator, "verify", JOB, "--checkpoint", "ckpt-1", "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["files"] == 8
    assert [(p["path"], p["kind"]) for p in report["problems"]] == [
        ("rank-0/files.img", "size"),
        ("rank-1/pages-1.img", "digest"),
    ]


def test_crctl_verify_exits_4_for_an_unknown_job_or_checkpoint(
    coordinator: Coordinator, capsys: pytest.CaptureFixture[str]
) -> None:
    coordinator.checkpoint("ckpt-1")
    assert run_cli(coordinator, "verify", "nope") == 4
    assert "unknown job 'nope'" in capsys.readouterr().err
    assert run_cli(coordinator, "verify", JOB, "--checkpoint", "ckpt-9") == 4
    assert "has no checkpoint ckpt-9" in capsys.readouterr().err


def test_crctl_verify_exits_3_when_the_coordinator_is_unreachable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["verify", JOB, "--api-address", "unix:/nonexistent/api.sock"]) == 3
    assert "coordinator unreachable at unix:/nonexistent/api.sock" in capsys.readouterr().err


def test_the_manifest_lines_cross_the_wire_with_their_algorithm() -> None:
    """What an agent votes with is what the coordinator verifies with."""
    line = digests.FileDigest("pages-1.img", 3, "ab" * 32).to_proto(prefix="rank-0/")
    wire = control_pb2.FileDigest.FromString(line.SerializeToString())
    assert digests.FileDigest.from_proto(wire).algorithm is digests.Algorithm.BLAKE3
