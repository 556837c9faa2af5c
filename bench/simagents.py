"""Simulated agents: the agents of many hosts in one process, for measuring the coordinator.

Each simulated host has its own CurveZMQ key and DEALER socket (set up as agent/link.py sets up
a real agent's), registers, sends heartbeats and answers the coordinator's orders with the real
protobuf messages; there is no CRIU, no rank process and no file. ``SimHost`` is the host's
agent without I/O (an order in, its answer out); ``SimAgents`` runs any number of them in one
thread with one ZeroMQ context.

    python bench/simagents.py --endpoint tcp://127.0.0.1:PORT --keys-dir DIR --first 1 --count 250

runs hosts sim0001..sim0250 (keys ``DIR/agents/simNNNN.key_secret``, made by ``crctl keys
init``) until SIGTERM or SIGINT, and ends by itself when its parent process dies."""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import heapq
import os
import random
import resource
import select
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import _checkout  # noqa: F401  (this checkout's packages first)
import zmq

from crctl import __version__, keys
from crctl.v1 import control_pb2
from crctl.wire import WireError, decode_coordinator_message, encode

CRIU_VERSION = "4.2.1"
# What a real agent reports on a host where every `crctl doctor` check passes.
CAPABILITIES = (
    "privileges",
    "criu",
    "criu_check",
    "pycriu",
    "nft",
    "criu-cache",
    "lazy-pages",
    "freezer",
    "namespaces",
)
# A small rank's CRIU images: (name, size in bytes).
IMAGE_FILES = (
    ("inventory.img", 46),
    ("core-{pid}.img", 2_410),
    ("mm-{pid}.img", 806),
    ("pagemap-{pid}.img", 1_224),
    ("pages-1.img", 4 << 20),
    ("files.img", 388),
)
DUMP_SECONDS = 0.005  # what a simulated rank's dump is said to have taken
REGISTER_RETRY = 5.0  # seconds before a registration sent without an answer is sent again
NOT_CONNECTED_RETRY = 0.1  # seconds before trying again when the connection is not up yet
PR_SET_PDEATHSIG = 1


def host_name(index: int) -> str:
    """The name (and key name) of simulated host ``index``, counted from 1: sim0001, ..."""
    return f"sim{index:04d}"


def host_names(count: int) -> list[str]:
    return [host_name(i) for i in range(1, count + 1)]


def fake_address(index: int) -> str:
    """An address the host reports (never used on the wire): 198.18.1.1, 198.18.1.2, ..."""
    return f"198.18.{1 + (index - 1) // 250}.{1 + (index - 1) % 250}"


@dataclass
class _Held:
    """A checkpoint this host is part of, from prepare to commit or abort."""

    job: str
    ranks: tuple[int, ...]
    leave_running: bool
    prepared_at: float
    frozen_at: float | None = None


@dataclass
class SimHost:
    """One host's agent without CRIU, processes or files: the messages a real agent sends."""

    name: str
    address: str
    pid_base: int
    clock: Callable[[], float] = time.monotonic
    heartbeat_interval: float = 1.0
    registered: bool = False
    ranks: dict[tuple[str, int], int] = field(default_factory=dict)  # (job, rank) -> pid
    orders: Counter[str] = field(default_factory=Counter)
    _held: dict[str, _Held] = field(default_factory=dict)
    _sequence: int = 0

    # --- messages the agent starts ---

    def register_message(self) -> control_pb2.AgentMessage:
        message = control_pb2.AgentMessage()
        info = message.register.info
        info.host = self.name
        info.addresses.append(self.address)
        info.criu_version = CRIU_VERSION
        info.capabilities.extend(CAPABILITIES)
        info.agent_version = __version__
        info.pid = os.getpid()
        for (job, rank), pid in sorted(self.ranks.items()):
            info.ranks.add(job=job, rank=rank, pid=pid)
        return message

    def heartbeat_message(self) -> control_pb2.AgentMessage:
        self._sequence += 1
        message = control_pb2.AgentMessage()
        message.heartbeat.host = self.name
        message.heartbeat.sequence = self._sequence
        return message

    # --- the coordinator's messages ---

    def handle(self, message: control_pb2.CoordinatorMessage) -> control_pb2.AgentMessage | None:
        """Apply one message from the coordinator; returns what to send back, if anything."""
        kind = message.WhichOneof("body") or ""
        self.orders[kind] += 1
        if kind == "register_ack":
            self.registered = message.register_ack.accepted
            if message.register_ack.heartbeat_interval > 0:
                self.heartbeat_interval = message.register_ack.heartbeat_interval
            return None
        if kind == "heartbeat_ack":
            if message.heartbeat_ack.known:
                return None
            self.registered = False  # the coordinator forgot us: register again
            return self.register_message()
        reply = control_pb2.AgentMessage(correlation_id=message.correlation_id)
        if kind == "launch_rank":
            reply.rank_launched.CopyFrom(self._launch(message.launch_rank))
        elif kind == "kill_job":
            reply.job_killed.CopyFrom(self._kill(message.kill_job.job))
        elif kind == "prepare":
            vote = self._prepare(message.prepare)
            if vote is None:
                reply.ready.checkpoint = message.prepare.checkpoint
            else:
                reply.vote.CopyFrom(vote)
        elif kind == "freeze":
            reply.vote.CopyFrom(self._freeze(message.freeze.checkpoint))
        elif kind == "commit":
            reply.commit_result.CopyFrom(self._commit(message.commit.checkpoint))
        elif kind == "abort":
            self._held.pop(message.abort.checkpoint, None)
            reply.abort_result.checkpoint = message.abort.checkpoint
        elif kind == "prepare_restore":
            reply.restore_result.restore = message.prepare_restore.restore
            reply.restore_result.step = "prepare"
            reply.restore_result.failed_rank = -1
            reply.restore_result.reason = f"restores are not simulated on {self.name}"
        elif kind == "restore_step":
            step = message.restore_step
            reply.restore_result.restore = step.restore
            reply.restore_result.step = step.step
            reply.restore_result.ok = step.step == "abort"
            reply.restore_result.failed_rank = -1
        else:
            reply.order_failed.reason = f"unknown order {kind!r}"
        return reply

    def _launch(self, order: control_pb2.LaunchRank) -> control_pb2.RankLaunched:
        key = (order.job, order.rank)
        if key in self.ranks:
            return control_pb2.RankLaunched(
                job=order.job, rank=order.rank, error=f"rank {order.rank} already runs here"
            )
        pid = self.pid_base + len(self.ranks) + 1
        self.ranks[key] = pid
        return control_pb2.RankLaunched(job=order.job, rank=order.rank, pid=pid)

    def _kill(self, job: str) -> control_pb2.JobKilled:
        killed = sorted(rank for j, rank in self.ranks if j == job)
        for rank in killed:
            del self.ranks[(job, rank)]
        return control_pb2.JobKilled(job=job, ranks=killed)

    def _prepare(self, order: control_pb2.PrepareCheckpoint) -> control_pb2.CheckpointVote | None:
        missing = [r for r in order.ranks if (order.job, r) not in self.ranks]
        if missing:
            return control_pb2.CheckpointVote(
                checkpoint=order.checkpoint,
                yes=False,
                reason=f"ranks {missing} of {order.job} do not run on {self.name}",
                failed_rank=missing[0],
            )
        self._held[order.checkpoint] = _Held(
            order.job, tuple(order.ranks), order.leave_running, self.clock()
        )
        return None

    def _freeze(self, checkpoint: str) -> control_pb2.CheckpointVote:
        held = self._held.get(checkpoint)
        if held is None:
            return control_pb2.CheckpointVote(
                checkpoint=checkpoint,
                yes=False,
                failed_rank=-1,
                reason=f"{checkpoint} is not ready on {self.name} (expired or unknown)",
            )
        held.frozen_at = self.clock()
        vote = control_pb2.CheckpointVote(checkpoint=checkpoint, yes=True)
        if not held.leave_running:  # ranks that stop come with their manifest in the vote
            vote.ranks.extend(self._images(checkpoint, held))
        return vote

    def _commit(self, checkpoint: str) -> control_pb2.CommitResult:
        held = self._held.pop(checkpoint, None)
        if held is None or held.frozen_at is None:
            return control_pb2.CommitResult(
                checkpoint=checkpoint,
                ok=False,
                reason=f"{checkpoint} is not held on {self.name} (expired or unknown)",
            )
        result = control_pb2.CommitResult(
            checkpoint=checkpoint, ok=True, frozen_seconds=self.clock() - held.frozen_at
        )
        if held.leave_running:  # released first, then checksummed: the manifest comes now
            result.ranks.extend(self._images(checkpoint, held))
        else:  # the ranks ended with the checkpoint
            for rank in held.ranks:
                self.ranks.pop((held.job, rank), None)
        return result

    def _images(self, checkpoint: str, held: _Held) -> list[control_pb2.RankImage]:
        images = []
        for rank in held.ranks:
            pid = self.ranks[(held.job, rank)]
            files = []
            for pattern, size in IMAGE_FILES:
                path = f"rank-{rank}/{pattern.format(pid=pid)}"
                digest = hashlib.sha256(f"{checkpoint}/{path}".encode()).hexdigest()
                files.append(control_pb2.FileDigest(path=path, size=size, sha256=digest))
            images.append(
                control_pb2.RankImage(
                    rank=rank,
                    host=self.name,
                    pid=pid,
                    files=files,
                    bytes=sum(f.size for f in files),
                    dump_seconds=DUMP_SECONDS,
                    stdout_pipe=f"pipe:[{pid + 1}]",
                    host_addresses=[self.address],
                )
            )
        return images


class SimAgents:
    """Runs simulated hosts in one thread: one DEALER socket each, one ZeroMQ context, one epoll
    over all the sockets. Plain non-blocking sockets rather than asyncio ones: the simulated
    agents share the machine's cores with the coordinator they measure, so they cost as little
    as they can."""

    def __init__(
        self, hosts: list[SimHost], *, endpoint: str, keys_dir: Path, heartbeat_interval: float
    ) -> None:
        self._hosts = hosts
        self._endpoint = endpoint
        self._keys_dir = keys_dir
        for host in hosts:
            host.heartbeat_interval = heartbeat_interval
        self._context = zmq.Context()
        self._context.set(zmq.MAX_SOCKETS, len(hosts) + 64)
        self.stopping = False

    def _socket(self, host: SimHost) -> zmq.Socket[bytes]:
        """A DEALER with the options and credentials of agent/link.py's."""
        own = keys.agent_keypair(self._keys_dir, host.name)
        sock: zmq.Socket[bytes] = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.RECONNECT_IVL, 200)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        sock.setsockopt(zmq.SNDHWM, 100)
        sock.routing_id = host.name.encode()
        sock.curve_serverkey = keys.coordinator_public_key(self._keys_dir)
        sock.curve_publickey = own.public
        sock.curve_secretkey = own.secret
        sock.connect(self._endpoint)
        return sock

    @staticmethod
    def _send(sock: zmq.Socket[bytes], message: control_pb2.AgentMessage) -> bool:
        """As the real agent sends: only on a connection that is up (False: dropped)."""
        try:
            sock.send(encode(message), flags=zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def _receive(self, host: SimHost, sock: zmq.Socket[bytes]) -> None:
        """Answer every message waiting on a host's socket."""
        while True:
            try:
                frame = sock.recv(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                message = decode_coordinator_message(frame)
            except WireError as exc:
                print(f"{host.name}: {exc}", file=sys.stderr)
                continue
            reply = host.handle(message)
            if reply is not None:
                self._send(sock, reply)

    def _tick(self, host: SimHost, sock: zmq.Socket[bytes], now: float) -> float:
        """Register until accepted, then send heartbeats; when to come back."""
        if not host.registered:
            sent = self._send(sock, host.register_message())
            return now + (REGISTER_RETRY if sent else NOT_CONNECTED_RETRY)
        self._send(sock, host.heartbeat_message())
        return now + host.heartbeat_interval * random.uniform(0.8, 1.0)

    def run(self) -> None:
        """Until ``stopping`` is set (checked at least every 0.2 s)."""
        sockets = [self._socket(host) for host in self._hosts]
        # One epoll over every socket's descriptor (zmq.Poller would walk all the sockets on
        # each call). The descriptor only says "look": after a recv that found nothing it is
        # quiet until something new happens, so every send is followed by such a recv.
        epoll = select.epoll()
        by_fd = {}
        for i, sock in enumerate(sockets):
            fd: int = sock.getsockopt(zmq.FD)  # type: ignore[assignment]
            epoll.register(fd, select.EPOLLIN)
            by_fd[fd] = i
        now = time.monotonic()
        due = [(now, i) for i in range(len(sockets))]
        try:
            while not self.stopping:
                wait = min(max(0.0, due[0][0] - time.monotonic()), 0.2)
                for fd, _ in epoll.poll(wait):
                    i = by_fd[fd]
                    self._receive(self._hosts[i], sockets[i])
                now = time.monotonic()
                while due[0][0] <= now:
                    _, i = heapq.heappop(due)
                    heapq.heappush(due, (self._tick(self._hosts[i], sockets[i], now), i))
                    self._receive(self._hosts[i], sockets[i])
        finally:
            epoll.close()
            for sock in sockets:
                sock.close(0)
            self._context.term()


def raise_open_files_limit() -> None:
    """Each CurveZMQ connection holds descriptors: allow as many as the hard limit does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _end_with_parent() -> None:
    """SIGTERM when the process that started us dies, so a killed benchmark leaves nothing."""
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the prctl
        raise SystemExit(1)


def _run(args: argparse.Namespace) -> None:
    hosts = [
        SimHost(name=host_name(i), address=fake_address(i), pid_base=100_000 + 64 * i)
        for i in range(args.first, args.first + args.count)
    ]
    agents = SimAgents(
        hosts,
        endpoint=args.endpoint,
        keys_dir=args.keys_dir,
        heartbeat_interval=args.heartbeat_interval,
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        agents.stopping = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    agents.run()
    handled = sum((host.orders for host in hosts), Counter[str]())
    print(f"simulated hosts {hosts[0].name}..{hosts[-1].name}: {dict(handled)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True, help="the coordinator's control endpoint")
    parser.add_argument("--keys-dir", type=Path, required=True)
    parser.add_argument("--first", type=int, default=1, help="first host number (from 1)")
    parser.add_argument("--count", type=int, required=True, help="how many hosts")
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        default=1.0,
        help="seconds between heartbeats until the coordinator's register_ack says otherwise",
    )
    args = parser.parse_args(argv)
    _end_with_parent()
    raise_open_files_limit()
    _run(args)


if __name__ == "__main__":
    main()
