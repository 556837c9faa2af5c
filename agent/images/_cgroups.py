"""The cgroup state a dump recorded.

A checkpoint freezes a rank's freezer cgroup before CRIU seizes it, and CRIU then records the
cgroup's state as it found it: FROZEN. Restored as is, the rank (and CRIU's own restorer, which
joins the cgroup) would freeze for good. A working copy is restored THAWED instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.images._format import load, replace

CGROUP_IMG = "cgroup.img"


def _freezer_states(entry: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for controller in entry.get("controllers", []):
        pending = list(controller.get("dirs", []))
        while pending:
            directory = pending.pop()
            pending.extend(directory.get("children", []))
            found.extend(
                p for p in directory.get("properties", []) if p.get("name") == "freezer.state"
            )
    return found


def thaw_recorded_freezer(images_dir: Path) -> int:
    """Record every freezer cgroup of a working copy as THAWED; returns how many changed."""
    path = images_dir / CGROUP_IMG
    if not path.is_file():
        return 0
    entries = load(path, "CGROUP")
    changed = 0
    for entry in entries:
        for prop in _freezer_states(entry):
            if prop.get("value") != "THAWED":
                prop["value"] = "THAWED"
                changed += 1
    if changed:
        replace(path, "CGROUP", entries)
    return changed
