"""File access with a rank owner's rights, from the root agent: a function run in a thread of
its own whose filesystem uid, gid and groups are the owner's (Linux keeps these per thread:
``setfsuid``, ``setfsgid`` and the raw ``setgroups`` system call; glibc's wrappers of the
latter would change every thread). The kernel then checks every open, rename and chmod as it
would for the owner, without root's capabilities that override file permissions. For work a
user asks root to do on files (a restart plugin rewriting the files they named)."""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

# System call numbers: (setgroups, setfsuid, setfsgid).
_CALLS = {"x86_64": (116, 122, 123), "aarch64": (159, 151, 152)}


def _set_thread_credentials(uid: int, gid: int, groups: Sequence[int]) -> None:
    machine = os.uname().machine
    if machine not in _CALLS:
        raise OSError(f"no per-thread credentials on {machine}")
    setgroups, setfsuid, setfsgid = _CALLS[machine]
    libc = ctypes.CDLL(None, use_errno=True)
    array = (ctypes.c_uint * max(len(groups), 1))(*groups)
    if libc.syscall(setgroups, len(groups), array) != 0:
        raise OSError(ctypes.get_errno(), "setgroups for this thread failed")
    libc.syscall(setfsgid, gid)
    libc.syscall(setfsuid, uid)
    # Each returns the previous value: asking again tells whether the change took.
    if libc.syscall(setfsgid, gid) != gid or libc.syscall(setfsuid, uid) != uid:
        raise OSError("the thread's filesystem credentials did not change")


def as_owner(uid: int, gid: int, groups: Sequence[int], work: Callable[[], T]) -> T:
    """``work()``'s result, its file access checked as ``uid``/``gid``/``groups``'s. Root (uid
    0) runs it here, unchanged."""
    if uid == 0:
        return work()
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            _set_thread_credentials(uid, gid, groups)
            outcome.append(work())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"as-uid-{uid}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]
