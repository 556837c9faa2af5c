"""Where a checkpoint's images are (coordinator.image_copies, pure parts): holders, the
sources a restarting host fetches from, partners for the copies, and the restarts refused
because no copy of a rank can be reached."""

from __future__ import annotations

import pytest

from coordinator.image_copies import holders, partners, require_restorable, sources
from coordinator.store import AgentRecord
from crctl.errors import ConflictError
from crctl.v1 import control_pb2, coordinator_pb2


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
