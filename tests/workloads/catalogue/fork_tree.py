"""fork_tree: a parent with children and a grandchild in process groups of their own and a
child in a session of its own, each reporting to the parent over its own pipe.

Covers: a process tree with several process groups and sessions (CRIU must restore the
pgid/sid of every task, and the pipes between them). Each descendant writes one line every
~20 ms: "<seq> <pid> <pgid> <sid>". The parent checks, per descendant: sequence numbers go
up by exactly one (no lost or repeated report), the reported pid is the one it knows, and the
pgid/sid are the ones it set up (also checked from the parent with os.getpgid/os.getsid for
its own children). Progress: reports checked."""

from __future__ import annotations

import os
import select
from dataclasses import dataclass

from tests.workloads.catalogue import _common

REPORT_EVERY = 0.02


@dataclass
class Expected:
    """What a descendant's reports must say; None where the parent cannot know in advance
    (a grandchild's pid), learned from its first report."""

    name: str
    pid: int | None
    own_group: bool
    own_session: bool
    next_seq: int = 0


def check_report(line: str, expected: Expected, parent_pgid: int, parent_sid: int) -> str | None:
    try:
        seq, pid, pgid, sid = (int(field) for field in line.split())
    except ValueError:
        return f"{expected.name}: unreadable report {line!r}"
    if seq != expected.next_seq:
        return f"{expected.name}: report {seq}, expected {expected.next_seq}"
    if expected.pid is not None and pid != expected.pid:
        return f"{expected.name}: reports pid {pid}, expected {expected.pid}"
    want_pgid = pid if expected.own_group or expected.own_session else parent_pgid
    if pgid != want_pgid:
        return f"{expected.name}: pgid {pgid}, expected {want_pgid}"
    want_sid = pid if expected.own_session else parent_sid
    if sid != want_sid:
        return f"{expected.name}: sid {sid}, expected {want_sid}"
    return None


def resync(line: str, next_seq: int) -> int:
    """The sequence number expected after `line`: one past the one it carries, so that a
    single lost or repeated report is one error, not an error on every report after it."""
    try:
        return int(line.split()[0]) + 1
    except (ValueError, IndexError):
        return next_seq + 1


def report_forever(writer: int) -> None:
    seq = 0
    while True:
        me = os.getpid()
        os.write(writer, f"{seq} {me} {os.getpgid(0)} {os.getsid(0)}\n".encode())
        seq += 1
        _common.pause(REPORT_EVERY)


def main() -> None:
    _, status = _common.start("fork_tree")
    parent_pgid, parent_sid = os.getpgid(0), os.getsid(0)
    names = ["group-child", "grandchild", "session-child", "plain-child"]
    pipes = {name: os.pipe() for name in names}

    def only_mine(name: str) -> int:
        for other, (reader, writer) in pipes.items():
            os.close(reader)
            if other != name:
                os.close(writer)
        return pipes[name][1]

    def grandchild() -> None:
        os.setpgid(0, 0)
        report_forever(only_mine("grandchild"))

    def group_child() -> None:
        os.setpgid(0, 0)
        _common.fork_child(grandchild)  # it dies with this child (PR_SET_PDEATHSIG)
        report_forever(only_mine("group-child"))

    def session_child() -> None:
        os.setsid()
        report_forever(only_mine("session-child"))

    def plain_child() -> None:
        report_forever(only_mine("plain-child"))

    children = {
        "group-child": _common.fork_child(group_child),
        "session-child": _common.fork_child(session_child),
        "plain-child": _common.fork_child(plain_child),
    }
    _common.at_exit(lambda: _common.kill_and_reap(list(children.values())))
    expected = {
        "group-child": Expected("group-child", children["group-child"], True, False),
        "grandchild": Expected("grandchild", None, True, False),
        "session-child": Expected("session-child", children["session-child"], False, True),
        "plain-child": Expected("plain-child", children["plain-child"], False, False),
    }
    readers = {}
    for name, (reader, writer) in pipes.items():
        os.close(writer)
        readers[reader] = name
    pending = {reader: b"" for reader in readers}
    checks = 0
    while True:
        ready, _, _ = select.select(list(readers), [], [], 1.0)
        for reader in ready:
            data = os.read(reader, 4096)
            if not data:
                status.error(f"{readers[reader]}: its pipe closed (the process is gone)")
                del readers[reader]
                continue
            pending[reader] += data
            *lines, pending[reader] = pending[reader].split(b"\n")
            for line in lines:
                text = line.decode(errors="replace")
                want = expected[readers[reader]]
                problem = check_report(text, want, parent_pgid, parent_sid)
                status.check(problem)
                if problem is None:
                    want.pid = int(text.split()[1])
                want.next_seq = resync(text, want.next_seq)
        checks += 1
        if checks % 50 == 0:
            for name, pid in children.items():
                want = expected[name]
                pgid = os.getpgid(pid)
                if (want.own_group or want.own_session) and pgid != pid:
                    status.error(f"{name}: os.getpgid says {pgid}, expected {pid}")
                if want.own_session and os.getsid(pid) != pid:
                    status.error(f"{name}: os.getsid says {os.getsid(pid)}, expected {pid}")


if __name__ == "__main__":
    main()
