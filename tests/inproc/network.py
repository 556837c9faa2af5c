"""The in-process control plane: the coordinator's ``Plane`` and each agent's ``Link`` joined in
memory, every message serialized with the real codec (crctl.wire), and faults on the wire.

A :class:`Fault` matches messages by direction, host and kind (the protobuf oneof name) and
drops, duplicates or delays the next ``times`` of them; a host can also be cut off (a partition:
nothing reaches it or comes from it). Delayed messages travel on loop callbacks, not on either
side's tasks, so they survive the death of their sender as a packet in flight would."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from crctl.errors import UnavailableError
from crctl.v1 import control_pb2
from crctl.wire import WireError, decode_agent_message, decode_coordinator_message, encode

log = structlog.get_logger()

Direction = Literal["to_agent", "to_coordinator"]
Handler = Callable[
    [str, control_pb2.AgentMessage], Awaitable[control_pb2.CoordinatorMessage | None]
]


@dataclass
class Fault:
    direction: Direction
    kind: str  # the message's oneof name, e.g. "commit", "vote", "commit_result"
    action: Literal["drop", "duplicate", "delay", "rewrite"]
    host: str | None = None  # None: any host
    times: int = 1
    delay: float = 0.0
    # Only messages this says yes to (e.g. restore steps of one name), decoded.
    where: Callable[[Any], bool] | None = None
    # For "rewrite": changes the decoded message (its body) in place before it goes on.
    change: Callable[[Any], None] | None = None
    fired: int = 0

    def matches(self, direction: Direction, host: str, kind: str, frame: bytes) -> bool:
        if not (
            self.fired < self.times
            and self.direction == direction
            and self.kind == kind
            and (self.host is None or self.host == host)
        ):
            return False
        if self.where is None:
            return True
        decode = decode_coordinator_message if direction == "to_agent" else decode_agent_message
        return self.where(getattr(decode(frame), kind))


@dataclass
class Network:
    """Who is attached, and what goes wrong on the way."""

    faults: list[Fault] = field(default_factory=list)
    cut: set[str] = field(default_factory=set)  # hosts partitioned away
    coordinator: LoopbackPlane | None = None
    links: dict[str, LoopbackLink] = field(default_factory=dict)
    delivered: list[tuple[Direction, str, str]] = field(default_factory=list)

    def fault(self, direction: Direction, kind: str, action: str, **kw: object) -> Fault:
        made = Fault(direction, kind, action, **kw)  # type: ignore[arg-type]
        self.faults.append(made)
        return made

    def _route(
        self,
        direction: Direction,
        host: str,
        kind: str,
        frame: bytes,
        deliver: Callable[..., None],
    ) -> None:
        if host in self.cut:
            return
        for fault in self.faults:
            if fault.matches(direction, host, kind, frame):
                fault.fired += 1
                log.info(
                    "inproc_fault", direction=direction, agent=host, kind=kind, action=fault.action
                )
                if fault.action == "drop":
                    return
                if fault.action == "duplicate":
                    deliver()
                    deliver()
                    return
                if fault.action == "rewrite":
                    assert fault.change is not None
                    deliver(self._rewritten(direction, kind, frame, fault.change))
                    return
                asyncio.get_running_loop().call_later(fault.delay, deliver)
                return
        self.delivered.append((direction, host, kind))
        deliver()

    @staticmethod
    def _rewritten(
        direction: Direction, kind: str, frame: bytes, change: Callable[[Any], None]
    ) -> bytes:
        decode = decode_coordinator_message if direction == "to_agent" else decode_agent_message
        message = decode(frame)
        change(getattr(message, kind))
        return encode(message)

    def to_agent(self, host: str, frame: bytes, kind: str) -> bool:
        link = self.links.get(host)
        if link is None:
            return False
        self._route("to_agent", host, kind, frame, lambda sent=frame: link.inbox.put_nowait(sent))
        return True

    def to_coordinator(self, host: str, frame: bytes, kind: str) -> bool:
        plane = self.coordinator
        if plane is None or host in self.cut:
            return False
        self._route(
            "to_coordinator",
            host,
            kind,
            frame,
            lambda sent=frame: plane.inbox.put_nowait((host, sent)),
        )
        return True


class LoopbackPlane:
    """The coordinator's side (as coordinator.control.ControlPlane, without ZeroMQ)."""

    def __init__(self, network: Network, reconnect_grace: float = 3.0) -> None:
        self._network = network
        self._grace = reconnect_grace
        self._handler: Handler | None = None
        self._pending: dict[str, tuple[str, asyncio.Future[control_pb2.AgentMessage]]] = {}
        self.inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    def set_handler(self, handler: Handler) -> None:
        self._handler = handler

    def attach(self) -> None:
        self._network.coordinator = self

    def detach(self) -> None:
        if self._network.coordinator is self:
            self._network.coordinator = None

    async def send(
        self, host: str, message: control_pb2.CoordinatorMessage, *, wait: float = 3.0
    ) -> None:
        frame = encode(message)
        kind = message.WhichOneof("body") or ""
        deadline = asyncio.get_running_loop().time() + wait
        while not self._network.to_agent(host, frame, kind):
            if asyncio.get_running_loop().time() >= deadline:
                raise UnavailableError(f"agent {host} is not connected", host=host)
            await asyncio.sleep(0.05)

    async def request(
        self, host: str, message: control_pb2.CoordinatorMessage, timeout: float
    ) -> control_pb2.AgentMessage:
        correlation = uuid.uuid4().hex
        message.correlation_id = correlation
        future: asyncio.Future[control_pb2.AgentMessage] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending[correlation] = (host, future)
        try:
            await self.send(host, message, wait=min(self._grace, max(timeout, 0.001)))
            return await asyncio.wait_for(future, timeout=max(timeout, 0.001))
        except TimeoutError:
            raise UnavailableError(
                f"agent {host} did not answer {message.WhichOneof('body')} within {timeout:.1f}s",
                host=host,
            ) from None
        finally:
            self._pending.pop(correlation, None)

    async def serve(self) -> None:
        while True:
            host, frame = await self.inbox.get()
            try:
                message = decode_agent_message(frame)
            except WireError as exc:
                log.warning("control_bad_message", key_name=host, error=str(exc))
                continue
            pending = self._pending.get(message.correlation_id)
            if message.correlation_id and pending is not None:
                asked, future = pending
                if asked == host and not future.done():
                    future.set_result(message)
                continue
            if self._handler is None or message.correlation_id:
                continue  # a late answer nobody waits for
            reply = await self._handler(host, message)
            if reply is not None:
                with contextlib.suppress(UnavailableError):
                    await self.send(host, reply, wait=0.0)


class LoopbackLink:
    """An agent's side (as agent.link.CoordinatorLink, without ZeroMQ)."""

    def __init__(self, network: Network, host: str) -> None:
        self._network = network
        self._host = host
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()

    def connect(self) -> None:
        self._network.links[self._host] = self

    async def send(self, message: control_pb2.AgentMessage) -> bool:
        kind = message.WhichOneof("body") or ""
        return self._network.to_coordinator(self._host, encode(message), kind)

    async def receive(self, timeout: float) -> control_pb2.CoordinatorMessage | None:
        try:
            frame = await asyncio.wait_for(self.inbox.get(), timeout)
        except TimeoutError:
            return None
        return decode_coordinator_message(frame)

    async def watch(self) -> None:
        await asyncio.Event().wait()

    def close(self) -> None:
        if self._network.links.get(self._host) is self:
            del self._network.links[self._host]
