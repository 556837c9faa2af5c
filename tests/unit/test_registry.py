"""Agent liveness and the durable state store, driven by a manual clock (no sleeping)."""

from pathlib import Path

from coordinator.registry import ALIVE, LOST, AgentRegistry
from coordinator.store import Store
from crctl.clock import ManualClock
from crctl.v1 import control_pb2


def _info(host: str) -> control_pb2.AgentInfo:
    return control_pb2.AgentInfo(
        host=host,
        addresses=[f"198.18.0.{len(host)}"],
        criu_version="4.1.1",
        capabilities=["criu"],
        pid=7,
    )


def test_registered_agent_is_alive_with_its_details(tmp_path: Path) -> None:
    registry = AgentRegistry(Store(tmp_path / "s.db"), ManualClock(), lost_after=5)
    record, revived = registry.register(_info("h1"))
    assert record.state == ALIVE
    assert not revived
    assert [a.host for a in registry.agents()] == ["h1"]
    assert registry.get("h1") is not None
    assert registry.get("h1").addresses == ("198.18.0.2",)  # type: ignore[union-attr]


def test_silent_agent_is_lost_only_after_the_timeout(tmp_path: Path) -> None:
    clock = ManualClock()
    registry = AgentRegistry(Store(tmp_path / "s.db"), clock, lost_after=5)
    registry.register(_info("h1"))
    clock.advance(4.9)
    assert registry.sweep() == []
    clock.advance(0.2)
    transitions = registry.sweep()
    assert [(t.host, t.state) for t in transitions] == [("h1", LOST)]
    assert registry.get("h1").state == LOST  # type: ignore[union-attr]
    assert registry.sweep() == []  # reported once


def test_heartbeats_keep_an_agent_alive_and_revive_a_lost_one(tmp_path: Path) -> None:
    clock = ManualClock()
    registry = AgentRegistry(Store(tmp_path / "s.db"), clock, lost_after=5)
    registry.register(_info("h1"))
    for _ in range(10):
        clock.advance(3)
        assert registry.heartbeat("h1") is None
        assert registry.sweep() == []
    clock.advance(6)
    registry.sweep()
    revived = registry.heartbeat("h1")
    assert revived is not None
    assert revived.state == ALIVE
    assert revived.silent_for == 6


def test_unknown_host_is_not_known(tmp_path: Path) -> None:
    registry = AgentRegistry(Store(tmp_path / "s.db"), ManualClock(), lost_after=5)
    assert not registry.knows("nobody")


def test_state_survives_a_restart_of_the_registry(tmp_path: Path) -> None:
    clock = ManualClock()
    db = tmp_path / "s.db"
    first = AgentRegistry(Store(db), clock, lost_after=5)
    first.register(_info("h1"))
    first.register(_info("h22"))
    clock.advance(2)
    first.heartbeat("h1")
    first.sweep()  # persists the heartbeat

    second = AgentRegistry(Store(db), clock, lost_after=5)

    agents = {a.host: a for a in second.agents()}
    assert set(agents) == {"h1", "h22"}
    assert agents["h1"].last_heartbeat == clock.now()
    assert agents["h22"].addresses == ("198.18.0.3",)


def test_coordinator_downtime_does_not_make_agents_lost(tmp_path: Path) -> None:
    clock = ManualClock()
    db = tmp_path / "s.db"
    AgentRegistry(Store(db), clock, lost_after=5).register(_info("h1"))
    clock.advance(60)  # the coordinator was down for a minute
    restarted = AgentRegistry(Store(db), clock, lost_after=5)
    clock.advance(1)
    assert restarted.sweep() == []  # a grace period of lost_after from the restart
    clock.advance(5)
    assert [t.host for t in restarted.sweep()] == ["h1"]
