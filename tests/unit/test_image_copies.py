"""Where a checkpoint's images are (coordinator.image_copies, pure parts): holders, the
sources a restarting host fetches from, partners for the copies, and the restarts refused
because no copy of a rank can be reached; and the drops of retired checkpoints' images, over
a fake control plane."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from coordinator.image_copies import (
    DROP_RETRY_AFTER,
    ImageCopies,
    holders,
    partners,
    require_restorable,
    sources,
)
from coordinator.storage import CheckpointStore
from coordinator.store import AgentRecord, CheckpointRecord, RankRecord, Store
from crctl.errors import ConflictError, UnavailableError
from crctl.v1 import control_pb2, coordinator_pb2
from tests.inproc import vtime


def agent(host: str, state: str = "alive", endpoint: bool = True) -> AgentRecord:
    return AgentRecord(
        host=host, addresses=("198.18.0.1",), criu_version="4.2.1", capabilities=(),
        agent_version="t", pid=1, state=state, registered_at=0.0, last_heartbeat=0.0,
        image_endpoint=f"tcp://{host}:50053" if endpoint else "", image_server_key="k" * 40,
    )  # fmt: skip


def image(rank: int, host: str, *copies: str) -> control_pb2.RankImage:
    return control_pb2.RankImage(rank=rank, host=host, copies=list(copies))


def test_holders_are_the_dumping_host_first_then_its_copies_once_each() -> None:
    assert holders(image(0, "h1", "h2", "h1", "h3")) == ["h1", "h2", "h3"]


def test_sources_are_the_live_holders_with_an_image_server_other_than_the_target() -> None:
    agents = {
        "h1": agent("h1", state="lost"),
        "h2": agent("h2"),
        "h3": agent("h3", endpoint=False),
        "h4": agent("h4"),
    }
    found = sources(image(0, "h1", "h2", "h3", "h4"), "h4", agents)
    assert [s.host for s in found] == ["h2"]
    assert found[0].endpoint == "tcp://h2:50053" and found[0].server_key == b"k" * 40


@pytest.mark.parametrize(
    ("dumped_on", "candidates", "expected"),
    [
        (["h1", "h2", "h3"], ["h1", "h2", "h3", "h4"], {"h1": "h2", "h2": "h3", "h3": "h4"}),
        (["h4"], ["h1", "h2", "h3", "h4"], {"h4": "h1"}),  # around the ring
        (["h1", "h3"], ["h1", "h3"], {"h1": "h3", "h3": "h1"}),
        (["h2"], ["h1", "h3"], {"h2": "h3"}),  # a lost dumping host still gets a partner
        (["h1"], ["h1"], {}),  # nobody else: no copy
    ],
)
def test_each_host_s_partner_is_the_next_live_host_in_name_order(
    dumped_on: list[str], candidates: list[str], expected: dict[str, str]
) -> None:
    assert partners(dumped_on, candidates) == expected


def manifest(*images: control_pb2.RankImage) -> coordinator_pb2.Manifest:
    return coordinator_pb2.Manifest(checkpoint="ckpt-1", job="ring", ranks=list(images))


def test_a_restart_is_refused_only_when_a_rank_has_no_live_holder_naming_where_it_is() -> None:
    agents = {"h1": agent("h1", state="lost"), "h2": agent("h2"), "h3": agent("h3", "lost")}
    ok = manifest(image(0, "h1", "h2"), image(1, "h3"))
    require_restorable(ok, {0: "h4", 1: "h3"}, agents)  # rank 1 restarts where it is
    with pytest.raises(ConflictError) as refused:
        require_restorable(ok, {0: "h4", 1: "h4"}, agents)
    assert "rank 1 (only on h3 (lost))" in refused.value.message
    assert "rank 0" not in refused.value.message
    with pytest.raises(ConflictError, match=r"h9 \(unknown\)"):
        require_restorable(manifest(image(0, "h9")), {0: "h2"}, agents)


class DropPlane:
    """A control plane whose agents answer drops, or fail them while ``failing``."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []
        self.failing: set[str] = set()

    async def send(
        self, host: str, message: control_pb2.CoordinatorMessage, *, wait: float = 0.0
    ) -> None:
        raise AssertionError("drops are requests")

    async def request(
        self, host: str, message: control_pb2.CoordinatorMessage, timeout: float
    ) -> control_pb2.AgentMessage:
        self.asked.append((host, message.drop_images.checkpoint))
        if host in self.failing:
            raise UnavailableError(f"agent {host} did not answer")
        reply = control_pb2.AgentMessage()
        reply.images_dropped.checkpoint = message.drop_images.checkpoint
        return reply


def test_a_retired_checkpoint_s_images_are_dropped_on_each_holder_once_it_is_reachable(
    tmp_path: Path,
) -> None:
    """h3 is lost when the checkpoint is retired and asked once it is back; h2's drop fails
    and is asked again only after DROP_RETRY_AFTER; each done drop is crossed off."""
    store = Store(":memory:")
    store.add_rank(RankRecord("ring", 0, "h1", 10, "running", None, ("app",)), 1.0)
    store.begin_checkpoint(
        CheckpointRecord(
            "ckpt-1", "ring", None, "preparing", False, "/c/1", 2.0, None, "", "", None
        )
    )
    store.delete_checkpoint("ckpt-1", images_on=["h1", "h2", "h3"], now=3.0)
    agents = {"h1": agent("h1"), "h2": agent("h2"), "h3": agent("h3", state="lost")}
    plane = DropPlane()
    plane.failing.add("h2")
    copies = ImageCopies(
        store=store,
        files=CheckpointStore(tmp_path),
        plane=plane,
        agents=lambda: agents,
        replicas=1,
    )

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def sweep(at: float) -> None:
            await asyncio.sleep(max(0.0, started + at - loop.time()))
            copies.drop_retired()
            await asyncio.sleep(0.01)  # the drops asked run

        await sweep(0)
        assert sorted(plane.asked) == [("h1", "ckpt-1"), ("h2", "ckpt-1")]
        assert [d.host for d in store.image_drops()] == ["h2", "h3"]
        agents["h3"] = agent("h3")  # back
        plane.failing.clear()
        await sweep(0.05)
        assert plane.asked[2:] == [("h3", "ckpt-1")]  # not h2: it failed a moment ago
        assert [d.host for d in store.image_drops()] == ["h2"]
        await sweep(DROP_RETRY_AFTER + 0.1)
        assert plane.asked[3:] == [("h2", "ckpt-1")]
        assert store.image_drops() == []

    vtime.run(scenario())  # a minute of retry delay on virtual time
