"""The workload catalogue: self-checking programs that exercise what CRIU must carry, each
run as `python -m tests.workloads.catalogue.<name> --rank R --ranks N --addresses A0,...
--port P --status FILE --work-dir DIR [extra args]` (see _common for the shared contract).

`WORKLOADS` names each program, how many ranks it runs as, what it covers, and the extra
arguments a runner passes it by default. Also, where an entry says so:
- `program`: the module it runs, when that is another entry's with other arguments;
- `user`: the local user its ranks run as (a runner launches them as that user; by default
  they run as the runner's user, root on the testbed);
- `launcher="mpirun"`: an MPI program, started as one MPI job of `ranks` processes (one per
  host) by `crctl mpirun`, not rank by rank. Every process gets the same arguments, in which
  "{rank}" stands for its MPI rank (`--rank {rank} --status DIR/rank-{rank}.json ...`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Spec:
    name: str
    ranks: int
    covers: str
    extra_args: tuple[str, ...] = ()
    program: str | None = None
    user: str | None = None
    launcher: Literal["ranks", "mpirun"] = "ranks"
    # All ranks on one host (and moved together), not one per host.
    packed: bool = False
    # What crctl cannot carry: its checkpoint must be refused with a reason saying this (and
    # the job run on untouched); "" for a workload that must move.
    refused: str = ""

    @property
    def module(self) -> str:
        return f"{__name__}.{self.program or self.name}"


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
    Spec("redis", 2, "redis-server as a child, clients pipelining on two connections"),
    Spec("memcached", 2, "memcached as a child run by nobody, gets/cas/incr on two connections"),
    Spec("postgres", 2, "PostgreSQL 15 as user postgres, psql and a wire client", user="postgres"),
    Spec("nginx_download", 2, "nginx, www-data workers, a slow 64 MiB keep-alive download"),
    Spec("jvm", 1, "a JVM run from source: 10 threads, a ConcurrentHashMap, a queue"),
    Spec("mpi_ring", 2, "MPICH via mpi4py: sendrecv ring, allreduce, bcast", launcher="mpirun"),
    Spec(
        "big_memory_1g",
        1,
        "1 GiB of patterned memory (big_memory's program)",
        extra_args=("--memory-mib", "1024"),
        program="big_memory",
    ),
    Spec("posix_shm", 1, "a shm_open object in /dev/shm mapped by two processes"),
    Spec("signalfd", 1, "a signalfd with queued real-time and pending standard signals"),
    Spec("pty_pair", 1, "a pty whose slave is a child session's controlling terminal"),
    Spec("unlinked_file", 1, "a deleted file held by two descriptors (a CRIU ghost file)"),
    Spec("unix_seqpacket", 1, "SOCK_SEQPACKET: a socketpair and a path-bound listener's link"),
    Spec("unix_dgram", 1, "path-bound Unix datagram sockets with bursts queued unread"),
    Spec("python_multiprocessing", 1, "a fork Pool of 4 workers, replaced every 50 tasks"),
    Spec("tcp_many", 2, "200 TCP connections between two ranks, a message on each per round"),
    Spec("file_locks", 1, "flock, POSIX record and OFD locks held, probed by a child"),
    Spec("memfd", 1, "a sealed memfd mapped by two processes"),
    Spec(
        "shm_between_ranks",
        2,
        "two ranks of one host sharing /dev/shm memory (refused: cannot be split)",
        packed=True,
        refused="share the memory of /dev/shm/crctl-shm-",
    ),
)

WORKLOADS: dict[str, Spec] = {spec.name: spec for spec in _SPECS}
