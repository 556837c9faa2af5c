"""A lazily restored rank whose memory cannot all be copied in must not run on (the kernel would
hand it zero-filled pages): the agent kills it, and says why. Fakes stand for CRIU's handle and
the rank's process (the real daemon's failure is in tests/e2e/test_criu_engine.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

from agent.restoring import HostRestore, RankRestore
from crctl.errors import CriuError
from crctl.plugins import RestartContext
from crctl.v1 import control_pb2


class FakeHeld:
    def __init__(self, failure: CriuError | None) -> None:
        self.failure = failure

    async def pages_in(self) -> None:
        await asyncio.sleep(0)
        if self.failure is not None:
            raise self.failure


class FakeProcess:
    def __init__(self) -> None:
        self.killed = 0

    def kill(self) -> bool:
        self.killed += 1
        return True


def _watch(tmp_path: Path, failure: CriuError | None) -> tuple[bool, FakeProcess]:
    host = HostRestore(
        order=control_pb2.PrepareRestore(job="j", restore="rst-1", checkpoint="c"),
        host="h1",
        work_dir=tmp_path,
    )
    context = RestartContext(
        job="j",
        checkpoint="c",
        rank=0,
        old_host="h0",
        new_host="h1",
        moves={},
        address_map={},
        images_dir=tmp_path,
        options={},
    )
    rank = RankRestore(0, control_pb2.RankImage(rank=0), tmp_path, context)
    rank.held = cast(Any, FakeHeld(failure))
    process = FakeProcess()

    async def run() -> bool:
        return await host._watch_pages(rank, cast(Any, process))

    return asyncio.run(run()), process


def test_a_rank_whose_memory_all_came_in_is_left_alone(tmp_path: Path) -> None:
    complete, process = _watch(tmp_path, None)
    assert complete is True and process.killed == 0


def test_a_rank_whose_lazy_pages_daemon_failed_is_killed(tmp_path: Path) -> None:
    complete, process = _watch(tmp_path, CriuError("criu lazy-pages for x failed: exit -9"))
    assert complete is False and process.killed == 1
