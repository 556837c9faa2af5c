"""timers_signals: an interval timer (setitimer ITIMER_REAL, SIGALRM every 10 ms), a SIGUSR1
kept pending while blocked, and real-time signals queued while blocked.

Covers: itimers, the signal mask, signal handlers and pending (process- and thread-directed)
signals, all of which CRIU dumps and restores. Each cycle:
- the SIGALRM count must grow within ALARM_TICKS ticks of ~20 ms and the timer must still
  have its 10 ms interval (counts, not timing: a freeze of any length is fine);
- SIGUSR1 is blocked, sent to the process, must show in sigpending and must not have been
  handled; it stays pending for HOLD_TICKS ticks; unblocked, it must have been handled
  exactly once;
- SIGRTMIN is blocked, sent RT_COUNT times to this thread (pthread_kill), then collected
  with sigtimedwait: exactly RT_COUNT (real-time signals queue), each from this pid.
Progress: checks passed (four a cycle)."""

from __future__ import annotations

import os
import signal
import threading

from tests.workloads.catalogue import _common

INTERVAL = 0.01
ALARM_TICKS = 50
HOLD_TICKS = 5
RT_COUNT = 3


class Counts:
    alarms = 0
    usr1 = 0


def check_timer(new_alarms: int) -> str | None:
    if new_alarms == 0:
        return f"no SIGALRM in {ALARM_TICKS} ticks"
    interval = signal.getitimer(signal.ITIMER_REAL)[1]
    if abs(interval - INTERVAL) > 1e-6:
        return f"the timer's interval is {interval}, expected {INTERVAL}"
    return None


def check_pending_usr1(
    pending: set[signal.Signals], handled_before: int, handled: int
) -> str | None:
    if signal.SIGUSR1 not in pending:
        return f"blocked SIGUSR1 is not pending (pending: {sorted(pending)})"
    if handled != handled_before:
        return "blocked SIGUSR1 was handled while blocked"
    return None


def check_delivered(handled_before: int, handled: int) -> str | None:
    if handled != handled_before + 1:
        return f"unblocked SIGUSR1 handled {handled - handled_before} times, expected once"
    return None


def check_queued(infos: list[signal.struct_siginfo | None], pid: int) -> str | None:
    got = [info for info in infos if info is not None]
    if len(got) != RT_COUNT:
        return f"{len(got)} queued SIGRTMIN collected, expected {RT_COUNT}"
    strangers = [info.si_pid for info in got if info.si_pid != pid]
    return f"SIGRTMIN from pids {strangers}, expected {pid}" if strangers else None


def main() -> None:
    _, status = _common.start("timers_signals")

    def on_alarm(signum: int, frame: object) -> None:
        Counts.alarms += 1

    def on_usr1(signum: int, frame: object) -> None:
        Counts.usr1 += 1

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGUSR1, on_usr1)
    signal.setitimer(signal.ITIMER_REAL, INTERVAL, INTERVAL)
    rt = signal.SIGRTMIN
    while True:
        before = Counts.alarms
        for _ in range(ALARM_TICKS):
            _common.pause(0.02)
            if Counts.alarms > before:
                break
        problems: list[str | None] = [check_timer(Counts.alarms - before)]

        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        handled = Counts.usr1
        os.kill(os.getpid(), signal.SIGUSR1)
        for _ in range(HOLD_TICKS):
            _common.pause(0.01)
        problems.append(check_pending_usr1(signal.sigpending(), handled, Counts.usr1))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        problems.append(check_delivered(handled, Counts.usr1))

        signal.pthread_sigmask(signal.SIG_BLOCK, {rt})
        for _ in range(RT_COUNT):
            signal.pthread_kill(threading.get_ident(), rt)
        _common.pause(0.02)
        infos = [signal.sigtimedwait({rt}, 0) for _ in range(RT_COUNT + 1)]
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {rt})
        problems.append(check_queued(infos, os.getpid()))

        for problem in filter(None, problems):
            status.error(problem)
        status.ok(problems.count(None))


if __name__ == "__main__":
    main()
