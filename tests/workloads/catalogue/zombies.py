"""zombies: a parent whose children exit (one with a code, one killed by a signal) and are
deliberately left unreaped for a while, next to live children; then reaped and made anew.

Covers: zombie tasks (CRIU must restore them as zombies with their exit status) and live
children next to them. Each cycle: fork two children that end at once (exit code 40 + cycle
% 50; SIGUSR2) and two that live, blocked reading a pipe. For HOLD_TICKS ticks of ~10 ms the
parent checks, without reaping (waitid WNOWAIT), that the dead ones are zombies with the right
status and the live ones have not ended. Then it tells the live ones (one byte down their pipe)
to exit with their own code, reaps all four with waitpid and checks every status. Progress:
ticks and reaps checked."""

from __future__ import annotations

import functools
import os
import signal

from tests.workloads.catalogue import _common

HOLD_TICKS = 50
DIE_POLLS = 500


def describe(si_code: int, si_status: int) -> str:
    if si_code == os.CLD_EXITED:
        return f"exit {si_status}"
    if si_code in (os.CLD_KILLED, os.CLD_DUMPED):
        return f"killed by signal {si_status}"
    return f"si_code {si_code} status {si_status}"


def check_zombie(pid: int, want: str) -> str | None:
    """None if `pid` is an unreaped child that ended as `want` says ("exit N" or "killed by
    signal N"); it stays unreaped."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    if info is None:
        return f"child {pid} should be a zombie ({want}) but has not ended"
    got = describe(info.si_code, info.si_status)
    return None if got == want else f"zombie {pid}: {got}, expected {want}"


def ended(pid: int) -> bool:
    """Whether the child has ended (it stays unreaped)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def check_alive(pid: int) -> str | None:
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    if info is None:
        return None
    return f"live child {pid} ended: {describe(info.si_code, info.si_status)}"


def check_reaped(wait_status: int, want: str) -> str | None:
    if os.WIFEXITED(wait_status):
        got = f"exit {os.WEXITSTATUS(wait_status)}"
    elif os.WIFSIGNALED(wait_status):
        got = f"killed by signal {os.WTERMSIG(wait_status)}"
    else:
        got = f"wait status {wait_status:#x}"
    return None if got == want else f"reaped {got}, expected {want}"


def exit_with(code: int) -> int:
    return code


def live_child(reader: int, code: int) -> int:
    os.read(reader, 1)
    return code


def main() -> None:
    _, status = _common.start("zombies")
    children: list[int] = []
    _common.at_exit(lambda: _common.kill_and_reap(children))
    cycle = 0
    while True:
        cycle += 1
        exit_code = 40 + cycle % 50
        dead = {
            _common.fork_child(functools.partial(exit_with, exit_code)): f"exit {exit_code}",
            _common.fork_child(lambda: os.kill(os.getpid(), signal.SIGUSR2)): (
                f"killed by signal {int(signal.SIGUSR2)}"
            ),
        }
        live = {}
        for offset in (1, 2):
            reader, writer = os.pipe()
            code = exit_code + 100 + offset
            pid = _common.fork_child(functools.partial(live_child, reader, code))
            os.close(reader)
            live[pid] = (writer, f"exit {code}")
        children[:] = [*dead, *live]
        for _ in range(DIE_POLLS):  # let the dead ones die (slower on a busy machine)
            if all(ended(pid) for pid in dead):
                break
            _common.pause(0.01)
        for _ in range(HOLD_TICKS):
            problems = [check_zombie(pid, want) for pid, want in dead.items()]
            problems += [check_alive(pid) for pid in live]
            status.check_all(problems)
            _common.pause(0.01)
        for writer, _ in live.values():
            os.write(writer, b"x")
            os.close(writer)
        wanted = {**dead, **{pid: want for pid, (_, want) in live.items()}}
        for pid, want in wanted.items():
            _, wait_status = os.waitpid(pid, 0)
            reaped = check_reaped(wait_status, want)
            status.check(reaped and f"child {pid}: {reaped}")
        children.clear()


if __name__ == "__main__":
    main()
