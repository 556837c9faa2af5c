"""Where a checkpoint's images are (coordinator.image_copies, pure parts): holders, the
sources a restarting host fetches from, partners for the copies, and the restarts refused
because no copy of a rank can be reached; and the drops of retired checkpoints' images, over
a fake control plane."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from google.protobuf.json_format import Parse

from coordinator.image_copies import (
    RETRY_AFTER,
    ImageCopies,
    holders,
    intact_copy_may_remain,
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


@pytest.mark.parametrize(
    ("read_on", "states", "expected"),
    [
        # h5 fetched from every live holder: h2 and h3 both served copies unlike the manifest
        ("h5", {"h2": "alive", "h3": "alive"}, ""),
        # ... but h3 was down: it was never asked
        ("h5", {"h2": "alive", "h3": "lost"}, "h3 (not reachable now) may hold an intact copy"),
        # h2 read its own copy only: h3's was not read
        ("h2", {"h2": "alive", "h3": "alive"}, "its copy on h2 differs; another is on h3"),
    ],
)
def test_a_rank_found_damaged_damages_the_checkpoint_only_when_every_copy_was_read(
    read_on: str, states: dict[str, str], expected: str
) -> None:
    agents = {host: agent(host, state=state) for host, state in states.items()}
    assert intact_copy_may_remain(image(1, "h2", "h3"), read_on, agents) == expected


def test_a_rank_with_one_copy_found_damaged_where_it_is_read_damages_the_checkpoint() -> None:
    """One holder (a shared store: every host reads the same files), or the holder itself."""
    agents = {"h2": agent("h2", state="lost"), "h5": agent("h5")}
    assert intact_copy_may_remain(image(1, "h2"), "h5", agents) == (
        "h2 (not reachable now) may hold an intact copy"
    )
    agents["h2"] = agent("h2")
    assert intact_copy_may_remain(image(1, "h2"), "h5", agents) == ""
    assert intact_copy_may_remain(image(1, "h2"), "h2", agents) == ""


class FakePlane:
    """A control plane whose agents carry out copies and drops, or fail them while
    ``failing``; ``asked``: (host, checkpoint) of each order, ``copies`` the copy orders."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []
        self.copies: list[tuple[str, list[int]]] = []
        self.failing: set[str] = set()

    async def send(
        self, host: str, message: control_pb2.CoordinatorMessage, *, wait: float = 0.0
    ) -> None:
        raise AssertionError("drops are requests")

    async def request(
        self, host: str, message: control_pb2.CoordinatorMessage, timeout: float
    ) -> control_pb2.AgentMessage:
        reply = control_pb2.AgentMessage()
        if message.WhichOneof("body") == "copy_images":
            order = message.copy_images
            self.copies.append((host, [r.rank for r in order.ranks]))
            reply.images_copied.checkpoint = order.checkpoint
            reply.images_copied.ok = host not in self.failing
            if host in self.failing:
                reply.images_copied.reason = "no space left on device"
            else:
                reply.images_copied.ranks.extend(r.rank for r in order.ranks)
            return reply
        self.asked.append((host, message.drop_images.checkpoint))
        if host in self.failing:
            raise UnavailableError(f"agent {host} did not answer")
        reply.images_dropped.checkpoint = message.drop_images.checkpoint
        return reply


def test_a_retired_checkpoint_s_images_are_dropped_on_each_holder_once_it_is_reachable(
    tmp_path: Path,
) -> None:
    """h3 is lost when the checkpoint is retired and asked once it is back; h2's drop fails
    and is asked again only after RETRY_AFTER; each done drop is crossed off."""
    store = Store(":memory:")
    store.add_rank(RankRecord("ring", 0, "h1", 10, "running", None, ("app",)), 1.0)
    store.begin_checkpoint(
        CheckpointRecord(
            "ckpt-1", "ring", None, "preparing", False, "/c/1", 2.0, None, "", "", None
        )
    )
    store.delete_checkpoint("ckpt-1", images_on=["h1", "h2", "h3"], now=3.0)
    agents = {"h1": agent("h1"), "h2": agent("h2"), "h3": agent("h3", state="lost")}
    plane = FakePlane()
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
        await sweep(RETRY_AFTER + 0.1)
        assert plane.asked[3:] == [("h2", "ckpt-1")]
        assert store.image_drops() == []

    vtime.run(scenario())  # a minute of retry delay on virtual time


def test_a_partner_copy_that_failed_is_made_again_after_the_retry_delay(tmp_path: Path) -> None:
    """h2, h1's partner, fails its copy (a full disk): the checkpoint is copied again only
    after RETRY_AFTER, by h3 (the next host: h2 failed it), then recorded in the manifest; a
    complete one is not copied again."""
    store = Store(":memory:")
    store.add_rank(RankRecord("ring", 0, "h1", 10, "running", None, ("app",)), 1.0)
    store.add_rank(RankRecord("ring", 1, "h2", 11, "running", None, ("app",)), 1.0)
    files = CheckpointStore(tmp_path)
    folder = files.create("ring", "ckpt-1")
    store.begin_checkpoint(
        CheckpointRecord(
            "ckpt-1", "ring", None, "preparing", True, str(folder), 2.0, None, "", "", None
        )
    )
    dumped = manifest(image(0, "h1"), image(1, "h2"))
    store.commit_checkpoint(
        "ckpt-1", "ring", files.write_manifest(folder, dumped), 3.0, ranks_stop=False
    )
    agents = {h: agent(h) for h in ("h1", "h2", "h3")}
    plane = FakePlane()
    plane.failing.add("h2")
    copies = ImageCopies(store=store, files=files, plane=plane, agents=lambda: agents, replicas=1)

    def copies_of() -> dict[int, list[str]]:
        record = store.checkpoint("ckpt-1")
        assert record is not None and record.manifest is not None
        parsed = Parse(record.manifest, coordinator_pb2.Manifest())
        return {i.rank: list(i.copies) for i in parsed.ranks}

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        copies.copy_again()  # the first sweep finds ckpt-1, committed, without copies
        await asyncio.sleep(0.01)
        assert sorted(plane.copies) == [("h2", [0]), ("h3", [1])]
        assert copies_of() == {0: [], 1: ["h3"]}
        copies.copy_again()  # too soon
        await asyncio.sleep(0.01)
        assert len(plane.copies) == 2
        await asyncio.sleep(RETRY_AFTER)
        started = loop.time()
        copies.copy_again()
        await asyncio.sleep(0.01)
        assert plane.copies[2:] == [("h3", [0])]  # rank 1's copy on h3 is not made twice
        assert copies_of() == {0: ["h3"], 1: ["h3"]}
        await asyncio.sleep(RETRY_AFTER)
        copies.copy_again()  # complete: nothing more
        await asyncio.sleep(0.01)
        assert len(plane.copies) == 3 and loop.time() > started

    vtime.run(scenario())
