"""Who calls: a local user's uid, primary gid and groups, as the kernel vouches for them.

An API caller's identity comes from the socket it called on (``SO_PEERCRED``, the credentials
the kernel recorded at ``connect()``: nobody can claim another's), or from a verified client
certificate naming a local user. Its groups are read from ``/proc/<pid>/status`` of the caller
(the kernel's list, as ``id`` would print it), checked to still belong to the same uid."""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from crctl.errors import NotFoundError

_PEERCRED = struct.Struct("3i")


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups, sorted
    name: str  # the user's name here, or "uid <N>" for a uid with no passwd entry

    @property
    def root(self) -> bool:
        return self.uid == 0

    def __str__(self) -> str:
        return f"{self.name} (uid {self.uid})"


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _proc_groups(pid: int, uid: int) -> tuple[int, ...] | None:
    """The supplementary groups of ``pid`` if it still runs as ``uid`` (real and effective);
    None if it is gone or is someone else now (its PID reused)."""
    try:
        status = open(f"/proc/{pid}/status").read()  # noqa: SIM115 - one read, closed at once
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    uids = fields.get("Uid", "").split()
    if len(uids) < 2 or int(uids[0]) != uid or int(uids[1]) != uid:
        return None
    return tuple(sorted({int(g) for g in fields.get("Groups", "").split()}))


def from_peer(sock: socket.socket) -> Identity | None:
    """The identity of the process at the other end of a connected Unix socket; None if it
    could not be established (the caller exited at once, or changed its uid)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    if pid <= 0:
        return None
    groups = _proc_groups(pid, uid)
    if groups is None:
        return None
    return Identity(uid=uid, gid=gid, groups=groups, name=user_name(uid))


def of_user(name: str) -> Identity:
    """A local user's identity from the user database (for a certificate naming that user)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise NotFoundError(f"no local user {name!r}") from None
    groups = os.getgrouplist(name, entry.pw_gid)
    return Identity(
        uid=entry.pw_uid,
        gid=entry.pw_gid,
        groups=tuple(sorted(set(groups))),
        name=name,
    )


def _ids(names_or_ids: tuple[str, ...], lookup: Callable[[str], int], kind: str) -> frozenset[int]:
    found: set[int] = set()
    for item in names_or_ids:
        if item.isdigit():
            found.add(int(item))
            continue
        try:
            found.add(lookup(item))
        except KeyError:
            raise NotFoundError(f"no local {kind} {item!r}") from None
    return frozenset(found)


def group_ids(names_or_ids: tuple[str, ...]) -> frozenset[int]:
    """Group names or numbers (from the configuration) as gids; an unknown name raises
    NotFoundError."""
    return _ids(names_or_ids, lambda name: grp.getgrnam(name).gr_gid, "group")


def user_ids(names_or_ids: tuple[str, ...]) -> frozenset[int]:
    """User names or numbers (from the configuration) as uids; an unknown name raises
    NotFoundError."""
    return _ids(names_or_ids, lambda name: pwd.getpwnam(name).pw_uid, "user")
