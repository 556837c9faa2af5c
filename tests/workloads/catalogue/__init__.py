"""The workload catalogue: self-checking programs that exercise what CRIU must carry, each
run as `python -m tests.workloads.catalogue.<name> --rank R --ranks N --addresses A0,...
--port P --status FILE --work-dir DIR [extra args]` (see _common for the shared contract).

`WORKLOADS` names each program, how many ranks it runs as, what it covers, and the extra
arguments a runner passes it by default."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Spec:
    name: str
    ranks: int
    covers: str
    extra_args: tuple[str, ...] = ()

    @property
    def module(self) -> str:
        return f"{__name__}.{self.name}"


_SPECS = (
    Spec("threads64", 1, "64 threads, counters under a lock, none going back"),
    Spec("fork_tree", 1, "children and a grandchild in own process groups and a session"),
    Spec("zombies", 1, "unreaped zombies (exit code, signal) next to live children"),
    Spec("pipes_fifo", 1, "an anonymous pipe with data in flight and a named FIFO"),
    Spec("unix_sockets", 1, "Unix socketpair, path-bound and abstract listeners"),
    Spec("tcp_pair", 2, "one TCP connection, messages in flight both ways"),
    Spec("udp_connected", 2, "connected UDP ping-pong with resends"),
    Spec("listen_backlog", 2, "connections queued unaccepted in a listen backlog"),
    Spec("half_closed", 2, "a half-closed TCP connection streaming one way"),
    Spec("epoll_server", 2, "an epoll server multiplexing 8 non-blocking connections"),
    Spec("inotify", 1, "an inotify watch on a file another thread rewrites"),
    Spec("timers_signals", 1, "an interval timer, blocked pending and queued signals"),
    Spec("sysv_ipc", 1, "SysV shared memory and a message queue between two processes"),
    Spec("mmap_file", 1, "a MAP_SHARED file in two processes and shared anonymous memory"),
    Spec("append_file", 1, "a file open O_APPEND, re-read and checked line by line"),
    Spec("asyncio_service", 2, "an asyncio server and 32 concurrent asyncio client streams"),
    Spec("big_memory", 1, "256 MiB of patterned memory, checked and partly rewritten"),
    Spec("eventfd_timerfd", 1, "an eventfd holding a count and a periodic timerfd"),
    Spec("ipv6_loopback", 1, "a TCP connection over ::1 between two threads of one rank"),
)

WORKLOADS: dict[str, Spec] = {spec.name: spec for spec in _SPECS}
