"""The coordinator's side of the control plane: a CurveZMQ ROUTER socket that agents connect to.

Authentication: every agent presents a Curve key; the ZAP handler admits only keys in the allow
list (``keys_dir/agents/*.key``) and logs each refusal. An admitted key's name is the only host
name that connection may speak for."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol

import structlog
import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

from crctl import keys
from crctl.errors import CrctlError, UnavailableError
from crctl.v1 import control_pb2
from crctl.wire import MAX_MESSAGE_SIZE, WireError, decode_agent_message, encode

ZAP_DOMAIN = "crctl"
RECONNECT_GRACE = 3.0  # seconds an order waits for its agent to reconnect
log = structlog.get_logger()

# (host the message speaks for, message) -> reply or None
Handler = Callable[
    [str, control_pb2.AgentMessage], Awaitable[control_pb2.CoordinatorMessage | None]
]


class _AllowList:
    """ZAP credentials provider: admits known agent keys, logs every refusal."""

    def __init__(self, allowed: dict[bytes, str]) -> None:
        self.allowed = allowed

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.allowed:
            return True
        log.warning("agent_refused", reason="unknown CurveZMQ key", client_key=key.decode())
        return False


class _NamedAuthenticator(AsyncioAuthenticator):
    """Reports the admitted key's name (not the raw key) as the ZMQ User-Id of its messages."""

    def __init__(self, context: zmq.asyncio.Context, allowed: dict[bytes, str]) -> None:
        super().__init__(context)
        self._names = allowed

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self._names.get(zmq.utils.z85.encode(client_public_key), "")


class Plane(Protocol):
    """What the coordinator's services need of the control plane: orders to agents and their
    answers. :class:`ControlPlane` is the ZeroMQ one; the in-process test tier has its own."""

    async def send(
        self, host: str, message: control_pb2.CoordinatorMessage, *, wait: float = ...
    ) -> None: ...

    async def request(
        self, host: str, message: control_pb2.CoordinatorMessage, timeout: float
    ) -> control_pb2.AgentMessage: ...


async def request_all(
    plane: Plane, hosts: Sequence[str], message: control_pb2.CoordinatorMessage, timeout: float
) -> dict[str, CrctlError]:
    """Send the same order to every host at once and wait for all their answers; the hosts
    that did not answer (unreachable, or silent past ``timeout``), with why. For orders whose
    answer carries nothing but "done", such as aborts."""

    async def one(host: str) -> CrctlError | None:
        order = control_pb2.CoordinatorMessage()
        order.CopyFrom(message)  # each request gets its own correlation id
        try:
            await plane.request(host, order, timeout)
        except CrctlError as exc:
            return exc
        return None

    answers = await asyncio.gather(*(one(host) for host in hosts))
    return {host: exc for host, exc in zip(hosts, answers, strict=True) if exc is not None}


class ControlPlane:
    def __init__(
        self, endpoint: str, keys_dir: Path, *, max_message_size: int = MAX_MESSAGE_SIZE
    ) -> None:
        self._endpoint = endpoint
        self._keys_dir = keys_dir
        self._max_message_size = max_message_size
        self._handler: Handler | None = None
        self._context = zmq.asyncio.Context()
        self._socket: zmq.asyncio.Socket | None = None
        self._raw: zmq.Socket[bytes] | None = None
        self._monitor: zmq.asyncio.Socket | None = None
        self._auth: _NamedAuthenticator | None = None
        self._pending: dict[str, tuple[str, asyncio.Future[control_pb2.AgentMessage]]] = {}
        # Correlation ids: unique per coordinator process, cheap (an agent answering with
        # another's id is refused anyway: answers must come from the host asked).
        self._prefix = f"{uuid.uuid4().hex[:8]}-"
        self._sequence = itertools.count(1)

    def set_handler(self, handler: Handler) -> None:
        """Who answers the messages agents start (registrations, heartbeats, events)."""
        self._handler = handler

    def start(self) -> None:
        server = keys.coordinator_keypair(self._keys_dir)
        allowed = keys.allowed_agent_keys(self._keys_dir)
        self._auth = _NamedAuthenticator(self._context, allowed)
        self._auth.start()
        self._auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=_AllowList(allowed))
        sock = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted agent takes over its identity
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # sending to a gone agent raises
        sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        sock.setsockopt(zmq.MAXMSGSIZE, self._max_message_size)  # see crctl.wire
        sock.curve_server = True
        sock.curve_publickey = server.public
        sock.curve_secretkey = server.secret
        sock.setsockopt_string(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        try:
            sock.bind(self._endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise UnavailableError(f"cannot listen for agents on {self._endpoint}: {exc}") from None
        self._socket = sock
        # The same socket without asyncio's futures, for the sends and the draining reads that
        # need no waiting (see _serve).
        self._raw = zmq.Socket.shadow(sock.underlying)
        self._monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        log.info("control_listening", endpoint=self._endpoint, allowed_agents=len(allowed))

    async def send(
        self, host: str, message: control_pb2.CoordinatorMessage, *, wait: float = RECONNECT_GRACE
    ) -> None:
        """Send to a connected agent; one that is reconnecting (e.g. just after a coordinator
        restart) gets ``wait`` seconds to come back."""
        assert self._socket is not None and self._raw is not None
        frames = [host.encode(), encode(message)]
        try:  # the usual case, without the asyncio socket's futures: queued at once
            self._raw.send_multipart(frames, zmq.NOBLOCK)
            return
        except zmq.ZMQError:
            pass  # not connected (yet): retried below for ``wait`` seconds
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            try:
                await self._socket.send_multipart(frames)
                return
            except zmq.ZMQError as exc:
                if asyncio.get_running_loop().time() >= deadline:
                    raise UnavailableError(
                        f"agent {host} is not connected: {exc}", host=host
                    ) from None
            await asyncio.sleep(0.05)

    async def request(
        self, host: str, message: control_pb2.CoordinatorMessage, timeout: float
    ) -> control_pb2.AgentMessage:
        """Send an order to an agent and await its answer (matched by correlation id)."""
        correlation = f"{self._prefix}{next(self._sequence):x}"
        message.correlation_id = correlation
        future: asyncio.Future[control_pb2.AgentMessage] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending[correlation] = (host, future)
        try:
            async with asyncio.timeout(max(timeout, 0.001)):
                await self.send(host, message)
                return await future
        except TimeoutError:
            order = message.WhichOneof("body")
            raise UnavailableError(
                f"agent {host} did not answer {order} within {timeout:.1f}s", host=host
            ) from None
        finally:
            self._pending.pop(correlation, None)

    async def serve(self) -> None:
        """Answer agents until cancelled. A frame that is not a well-formed message from the
        host its key names is refused with a warning; nothing an agent sends stops this."""
        watcher = asyncio.create_task(self._watch_connections())
        try:
            await self._serve()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _serve(self) -> None:
        """Wait until messages are there, then take every one waiting before waiting again:
        a round of a thousand agents' answers costs one wake-up, not a future per message."""
        assert self._socket is not None and self._raw is not None
        while True:
            await self._socket.poll()  # POLLIN, no timeout
            while True:
                try:
                    frames = self._raw.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                await self._dispatch(frames)

    async def _dispatch(self, frames: list[zmq.Frame]) -> None:
        """One message from an agent: a reply to its order, or one it starts."""
        speaker = frames[-1].get("User-Id") or ""
        if len(frames) != 2:
            log.warning("control_bad_envelope", key_name=speaker, frames=len(frames))
            return
        identity, frame = frames
        try:
            message = decode_agent_message(frame.bytes)
        except WireError as exc:
            log.warning("control_bad_message", key_name=speaker, error=str(exc))
            return
        if identity.bytes.decode(errors="replace") != speaker:
            log.warning(
                "agent_refused",
                reason="identity does not match its key",
                identity=identity.bytes.decode(errors="replace"),
                key_name=speaker,
            )
            return
        if message.correlation_id:
            self._answer(speaker, message)
            return
        if self._handler is None:
            return
        try:
            reply = await self._handler(speaker, message)
        except Exception:  # one bad message must not stop the control plane
            log.exception("control_handler_failed", agent=speaker, kind=message.WhichOneof("body"))
            return
        if reply is not None:
            try:
                await self.send(speaker, reply, wait=0.0)
            except UnavailableError as exc:
                log.warning("control_reply_failed", error=str(exc), agent=speaker)

    def _answer(self, speaker: str, message: control_pb2.AgentMessage) -> None:
        """Hand a reply to the request awaiting it; one that no request of its host awaits
        (late, repeated, or from another host) is dropped with a warning."""
        host, future = self._pending.get(message.correlation_id, ("", None))
        if future is None:
            reason = "no order awaits it (answered too late, or never sent)"
        elif host != speaker:
            reason = f"the order went to {host}, not to this agent"
        elif future.done():
            reason = "the order was answered already"
        else:
            future.set_result(message)
            return
        log.warning(
            "control_reply_refused",
            agent=speaker,
            kind=message.WhichOneof("body"),
            correlation_id=message.correlation_id,
            reason=reason,
        )

    async def _watch_connections(self) -> None:
        """Log every dropped agent connection: an agent that went away, or one whose frame was
        over the size limit (ZeroMQ drops those connections without a word)."""
        assert self._monitor is not None
        while True:
            await self._monitor.recv_multipart()  # EVENT_DISCONNECTED: no agent named in it
            log.warning(
                "agent_connection_dropped",
                endpoint=self._endpoint,
                reason="the agent went away or sent a frame over "
                f"{self._max_message_size} bytes; it reconnects by itself",
            )

    def close(self) -> None:
        if self._socket is not None:
            if self._monitor is not None:
                self._socket.disable_monitor()
                self._monitor.close(0)
            self._socket.close(0)
        if self._auth is not None:
            self._auth.stop()
        self._context.term()
