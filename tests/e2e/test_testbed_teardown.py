"""`crctl testbed down` removes every process, namespace, link and file the testbed made, and is
safe to run twice."""

from __future__ import annotations

from pathlib import Path

from testbed import bed, netns, procs

from .helpers import crctl


def test_testbed_down_leaves_nothing_and_can_run_twice(tmp_path: Path) -> None:
    directory = tmp_path / "bed"
    state = bed.up(1, directory)
    refs = list(state.processes.values())
    assert refs and all(procs.is_running(ref) for ref in refs)

    first = crctl("testbed", "down", "--dir", str(directory))
    second = crctl("testbed", "down", "--dir", str(directory))

    assert "removed" in first.stdout
    assert "nothing to do" in second.stdout
    assert netns.namespaces_matching(r"crctl-h\d+") == []
    assert not netns.link_exists(bed.BRIDGE)
    assert not directory.exists()
    assert not any(procs.is_running(ref) for ref in refs)
