"""The agent's side of the control plane: a CurveZMQ DEALER connected to the coordinator.

ZeroMQ reconnects by itself when the coordinator comes back; messages are only queued on a
completed connection (ZMQ_IMMEDIATE), so a coordinator that was away is not flooded with stale
heartbeats. Authentication failures are reported by a socket monitor."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from crctl import keys
from crctl.v1 import control_pb2
from crctl.wire import MAX_MESSAGE_SIZE, WireError, decode_coordinator_message, encode

log = structlog.get_logger()


class CoordinatorLink:
    def __init__(self, endpoint: str, keys_dir: Path, key_name: str, host: str) -> None:
        self._endpoint = endpoint
        self._context = zmq.asyncio.Context()
        own = keys.agent_keypair(keys_dir, key_name)
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.RECONNECT_IVL, 200)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        sock.setsockopt(zmq.SNDHWM, 100)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_SIZE)  # see crctl.wire
        sock.routing_id = host.encode()
        sock.curve_serverkey = keys.coordinator_public_key(keys_dir)
        sock.curve_publickey = own.public
        sock.curve_secretkey = own.secret
        self._monitor = sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_SUCCEEDED
            | zmq.EVENT_DISCONNECTED
        )
        self._socket = sock
        self.connected = asyncio.Event()

    def connect(self) -> None:
        self._socket.connect(self._endpoint)

    async def send(self, message: control_pb2.AgentMessage) -> bool:
        """Send if a connection is up; returns False (message dropped) otherwise."""
        try:
            await self._socket.send(encode(message), flags=zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    async def receive(self, timeout: float) -> control_pb2.CoordinatorMessage | None:
        """The next message, or None after ``timeout`` seconds or for a frame that is not one
        message (refused with a warning)."""
        if not await self._socket.poll(int(timeout * 1000)):
            return None
        frames = await self._socket.recv_multipart()
        if len(frames) != 1:
            log.warning("control_bad_envelope", endpoint=self._endpoint, frames=len(frames))
            return None
        try:
            return decode_coordinator_message(frames[0])
        except WireError as exc:
            log.warning("control_bad_message", endpoint=self._endpoint, error=str(exc))
            return None

    async def watch(self) -> None:
        """Log connection events; runs until cancelled."""
        while True:
            event = parse_monitor_message(await self._monitor.recv_multipart())
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connected.set()
                log.info("coordinator_connected", endpoint=self._endpoint)
            elif kind == zmq.EVENT_DISCONNECTED:
                self.connected.clear()
                log.warning("coordinator_disconnected", endpoint=self._endpoint)
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                log.error(
                    "coordinator_refused_us",
                    endpoint=self._endpoint,
                    reason="authentication failed: this agent's key is not allowed",
                    status=event["value"],
                )
            else:
                log.error(
                    "coordinator_handshake_failed", endpoint=self._endpoint, status=event["value"]
                )

    def close(self) -> None:
        self._socket.disable_monitor()
        self._monitor.close(0)
        self._socket.close(0)
        self._context.term()
