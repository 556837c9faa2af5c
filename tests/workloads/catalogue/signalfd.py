"""signalfd: signals read through a signalfd (ctypes on libc), never by a handler: a child
queues real-time signals with values and sends SIGUSR1; the rank sends itself SIGUSR2, which
stays pending until its next read, so there are always pending signals when the job is frozen.

Covers: a signalfd and the signals pending for the process (CRIU restores the signalfd's mask
and the queue of pending signals, real-time signals with their values in order). The three
signals are blocked in every thread, so they wait in the queue for the signalfd. The child
queues SIGRTMIN+2 with value 0, 1, 2, ... (sigqueue) every few milliseconds and sends SIGUSR1
(which the kernel may merge) every tenth time. Each operation the rank checks SIGUSR2 is
pending (sigpending), then drains the signalfd: the real-time values must go on from the last
one by one, none lost or repeated, sent by the child (si_pid, SI_QUEUE); SIGUSR1 from the
child; exactly one SIGUSR2, from the rank itself; then it sends itself SIGUSR2 again. No
real-time signal for QUIET_OPERATIONS operations in a row is an error (the child stopped).
Progress: operations checked."""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import struct
from dataclasses import dataclass

from tests.workloads.catalogue import _common

QUEUED = signal.SIGRTMIN + 2
SIGNALS = (QUEUED, signal.SIGUSR1, signal.SIGUSR2)
SFD_NONBLOCK, SFD_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
SI_USER, SI_QUEUE = 0, -1
SIGINFO_SIZE = 128
SIGINFO = struct.Struct("=IiiIIiIIIIii")  # signo errno code pid uid fd tid band overrun ...
SEND_EVERY = 0.004
READ_EVERY = 0.05
QUIET_OPERATIONS = 100


class SigSet(ctypes.Structure):
    _fields_ = [("bits", ctypes.c_ulong * 16)]


class SigVal(ctypes.Union):
    _fields_ = [("sival_int", ctypes.c_int), ("sival_ptr", ctypes.c_void_p)]


@dataclass(frozen=True)
class Received:
    signo: int
    code: int
    pid: int
    value: int


def open_signalfd(signals: tuple[int, ...]) -> int:
    lib = _common.libc()
    mask = SigSet()
    lib.sigemptyset(ctypes.byref(mask))
    for signo in signals:
        lib.sigaddset(ctypes.byref(mask), signo)
    lib.signalfd.argtypes = [ctypes.c_int, ctypes.POINTER(SigSet), ctypes.c_int]
    fd = lib.signalfd(-1, ctypes.byref(mask), SFD_NONBLOCK | SFD_CLOEXEC)
    return _common.check_libc(fd, "signalfd")


def drain(fd: int) -> list[Received]:
    found: list[Received] = []
    while True:
        try:
            data = os.read(fd, SIGINFO_SIZE * 64)
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                return found
            raise
        for at in range(0, len(data), SIGINFO_SIZE):
            fields = SIGINFO.unpack_from(data, at)
            found.append(Received(fields[0], fields[2], fields[3], fields[11]))


def send(parent: int) -> None:
    """The child: queue SIGRTMIN+2 with values 0, 1, ...; SIGUSR1 every tenth time."""
    lib = _common.libc()
    lib.sigqueue.argtypes = [ctypes.c_int, ctypes.c_int, SigVal]
    value = 0
    while True:
        _common.check_libc(lib.sigqueue(parent, QUEUED, SigVal(sival_int=value)), "sigqueue")
        if value % 10 == 0:
            os.kill(parent, signal.SIGUSR1)
        value += 1
        _common.pause(SEND_EVERY)


class Checker:
    def __init__(self, own: int, child: int) -> None:
        self.own = own
        self.child = child
        self.next_value = 0
        self.quiet = 0

    def check(self, received: list[Received], pending: set[int]) -> list[str]:
        problems = []
        if signal.SIGUSR2 not in pending:
            problems.append("SIGUSR2 (sent to itself) is not pending before the read")
        own = [r for r in received if r.signo == signal.SIGUSR2]
        if len(own) != 1 or own[0].pid != self.own or own[0].code != SI_USER:
            problems.append(f"expected one SIGUSR2 from pid {self.own}, got {own}")
        queued = [r for r in received if r.signo == QUEUED]
        for r in queued:
            if r.pid != self.child or r.code != SI_QUEUE:
                problems.append(f"a queued signal from pid {r.pid}, code {r.code}")
            elif r.value != self.next_value:
                problems.append(f"queued value {r.value}, expected {self.next_value}")
            self.next_value = r.value + 1
        for r in received:
            if r.signo == signal.SIGUSR1 and r.pid != self.child:
                problems.append(f"SIGUSR1 from pid {r.pid}, not the child {self.child}")
        self.quiet = 0 if queued else self.quiet + 1
        if self.quiet >= QUIET_OPERATIONS:
            problems.append(f"no queued signal in {self.quiet} operations")
            self.quiet = 0
        return problems


def main() -> None:
    _, status = _common.start("signalfd")
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    fd = open_signalfd(SIGNALS)
    own = os.getpid()
    child = _common.fork_child(lambda: send(own))
    _common.at_exit(lambda: _common.kill_and_reap([child]))
    checker = Checker(own, child)
    os.kill(own, signal.SIGUSR2)
    while True:
        _common.pause(READ_EVERY)
        pending = signal.sigpending()
        status.check_all(checker.check(drain(fd), pending))
        os.kill(own, signal.SIGUSR2)


if __name__ == "__main__":
    main()
