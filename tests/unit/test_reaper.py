"""The orphan reaper's view of our children: exited, unreaped children are found from the
kernel's per-thread children lists, including children of threads other than the main one."""

from __future__ import annotations

import subprocess
import threading
import time

from agent import reaper


def _wait_for_zombie(pid: int, timeout: float = 5.0) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        zombies = reaper._zombie_children()
        if pid in zombies:
            return zombies
        time.sleep(0.01)
    return reaper._zombie_children()


def test_an_exited_child_is_a_zombie_child_until_reaped() -> None:
    child = subprocess.Popen(["true"])
    try:
        assert child.pid in (reaper._children() or [child.pid])
        zombies = _wait_for_zombie(child.pid)
        assert zombies.get(child.pid) == "true"
    finally:
        child.wait()
    assert child.pid not in reaper._zombie_children()


def test_a_child_of_another_thread_is_found_too() -> None:
    started: list[subprocess.Popen[bytes]] = []
    thread = threading.Thread(target=lambda: started.append(subprocess.Popen(["sleep", "0"])))
    thread.start()
    thread.join()
    child = started[0]
    try:
        assert child.pid in _wait_for_zombie(child.pid)
    finally:
        child.wait()
