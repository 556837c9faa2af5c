"""Malformed input on the control plane, at both ends: a real coordinator ControlPlane and a real
agent CoordinatorLink on loopback, with real CurveZMQ keys, fed frames that are not messages,
envelopes of the wrong shape, replies nobody asked for and frames over the size limit. Each is
refused with a warning, and the next well-formed message is served as usual."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
import zmq
import zmq.asyncio

from agent.link import CoordinatorLink
from coordinator.control import ControlPlane
from crctl import keys
from crctl.v1 import control_pb2
from crctl.wire import decode_agent_message, decode_coordinator_message, encode

WAIT = 5.0  # seconds any one step may take on loopback
Logs = list[dict[str, Any]]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def run(scenario: Callable[[Logs], Awaitable[None]]) -> Logs:
    """Run ``scenario`` with every log event captured; the events it logged."""

    async def bounded() -> None:
        await asyncio.wait_for(scenario(logs), timeout=30)

    with structlog.testing.capture_logs() as logs:
        asyncio.run(bounded())
    return logs


async def logged(logs: Logs, event: str, **fields: Any) -> dict[str, Any]:
    """The first ``event`` logged with ``fields``, waiting for it to come."""
    for _ in range(int(WAIT / 0.01)):
        for entry in logs:
            if entry["event"] == event and fields.items() <= entry.items():
                return entry
        await asyncio.sleep(0.01)
    raise AssertionError(f"no {event} {fields} logged; logged: {logs}")


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    keys.init_keys(tmp_path, ["h1", "h2"])
    return tmp_path


def heartbeat(host: str) -> bytes:
    return encode(control_pb2.AgentMessage(heartbeat=control_pb2.Heartbeat(host=host)))


class Agent:
    """The test's side of an agent: a CurveZMQ DEALER with an allowed key that sends raw frames."""

    def __init__(self, keys_dir: Path, endpoint: str, name: str, identity: str = "") -> None:
        self._context = zmq.asyncio.Context()
        own = keys.agent_keypair(keys_dir, name)
        self.socket = self._context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.routing_id = (identity or name).encode()
        self.socket.curve_serverkey = keys.coordinator_public_key(keys_dir)
        self.socket.curve_publickey = own.public
        self.socket.curve_secretkey = own.secret
        self.socket.connect(endpoint)
        self.name = name

    async def receive(self) -> control_pb2.CoordinatorMessage:
        assert await self.socket.poll(int(WAIT * 1000)), "the coordinator sent nothing"
        return decode_coordinator_message(await self.socket.recv())

    async def answer(self, message: control_pb2.AgentMessage) -> None:
        await self.socket.send(encode(message))

    async def heartbeat(self) -> None:
        """A heartbeat answered: the control plane serves this agent."""
        await self.socket.send(heartbeat(self.name))
        assert (await self.receive()).heartbeat_ack.known

    def close(self) -> None:
        self.socket.close(0)
        self._context.term()


class Handler:
    """The domain's part, reduced to answering heartbeats and remembering what reached it."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []

    async def __call__(
        self, host: str, message: control_pb2.AgentMessage
    ) -> control_pb2.CoordinatorMessage | None:
        self.seen.append(message.WhichOneof("body"))
        if message.HasField("heartbeat"):
            return control_pb2.CoordinatorMessage(
                heartbeat_ack=control_pb2.HeartbeatAck(known=True)
            )
        return None


@asynccontextmanager
async def control_plane(
    keys_dir: Path, handler: Handler, **options: Any
) -> AsyncIterator[tuple[ControlPlane, str]]:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    plane = ControlPlane(endpoint, keys_dir, **options)
    plane.set_handler(handler)
    plane.start()
    serving = asyncio.create_task(plane.serve())
    try:
        yield plane, endpoint
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        plane.close()


@asynccontextmanager
async def agents(keys_dir: Path, endpoint: str, *names: str) -> AsyncIterator[list[Agent]]:
    connected = [Agent(keys_dir, endpoint, name) for name in names]
    try:
        for agent in connected:
            await agent.heartbeat()
        yield connected
    finally:
        for agent in connected:
            agent.close()


# --- the coordinator's ROUTER ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frames", "event", "detail"),
    [
        ([b"\xff\xff\xff"], "control_bad_message", "malformed agent message"),
        ([b""], "control_bad_message", "agent message with no body"),
        # field 16: in no AgentMessage's oneof, so it parses as an unknown field and no body
        ([b"\x82\x01\x00"], "control_bad_message", "agent message with no body"),
        ([heartbeat("h1"), b"and more"], "control_bad_envelope", "frames=3"),
    ],
    ids=["not-protobuf", "empty", "unknown-oneof-member", "two-frames"],
)
def test_a_frame_that_is_no_message_is_refused_with_a_warning_and_the_plane_serves_on(
    keys_dir: Path, frames: list[bytes], event: str, detail: str
) -> None:
    handler = Handler()

    async def scenario(logs: Logs) -> None:
        async with (
            control_plane(keys_dir, handler) as (_, endpoint),
            agents(keys_dir, endpoint, "h1") as (agent,),
        ):
            await agent.socket.send_multipart(frames)
            entry = await logged(logs, event, key_name="h1", log_level="warning")
            assert detail in entry.get("error", f"frames={entry.get('frames')}")
            await agent.heartbeat()

    run(scenario)
    assert handler.seen == ["heartbeat", "heartbeat"]


def test_an_agent_speaking_for_another_host_is_refused(keys_dir: Path) -> None:
    handler = Handler()

    async def scenario(logs: Logs) -> None:
        async with control_plane(keys_dir, handler) as (_, endpoint):
            impostor = Agent(keys_dir, endpoint, "h1", identity="h2")
            try:
                await impostor.socket.send(heartbeat("h2"))
                await logged(logs, "agent_refused", identity="h2", key_name="h1")
            finally:
                impostor.close()
            async with agents(keys_dir, endpoint, "h1"):
                pass

    run(scenario)
    assert handler.seen == ["heartbeat"]


def test_a_reply_no_order_awaits_is_refused_and_never_reaches_the_domain(keys_dir: Path) -> None:
    handler = Handler()

    async def scenario(logs: Logs) -> None:
        async with (
            control_plane(keys_dir, handler) as (_, endpoint),
            agents(keys_dir, endpoint, "h1") as (agent,),
        ):
            stray = control_pb2.AgentMessage(correlation_id="c0ffee")
            stray.order_failed.reason = "late"
            await agent.answer(stray)
            entry = await logged(logs, "control_reply_refused", agent="h1", kind="order_failed")
            assert "no order awaits it" in entry["reason"]
            await agent.heartbeat()

    run(scenario)
    assert handler.seen == ["heartbeat", "heartbeat"]


def test_a_reply_from_another_host_is_refused_and_the_order_waits_for_its_own(
    keys_dir: Path,
) -> None:
    async def scenario(logs: Logs) -> None:
        async with (
            control_plane(keys_dir, Handler()) as (plane, endpoint),
            agents(keys_dir, endpoint, "h1", "h2") as (h1, h2),
        ):
            order = control_pb2.CoordinatorMessage(kill_job=control_pb2.KillJob(job="ring"))
            asked = asyncio.create_task(plane.request("h1", order, timeout=WAIT))
            correlation = (await h1.receive()).correlation_id

            forged = control_pb2.AgentMessage(correlation_id=correlation)
            forged.job_killed.job = "ring"
            await h2.answer(forged)
            entry = await logged(logs, "control_reply_refused", agent="h2", kind="job_killed")
            assert entry["reason"] == "the order went to h1, not to this agent"
            assert not asked.done()

            genuine = control_pb2.AgentMessage(correlation_id=correlation)
            genuine.job_killed.job = "ring"
            genuine.job_killed.ranks.append(0)
            await h1.answer(genuine)
            assert await asked == genuine

    run(scenario)


def test_a_frame_over_the_size_limit_drops_the_connection_with_a_warning_and_the_agent_is_back(
    keys_dir: Path,
) -> None:
    async def scenario(logs: Logs) -> None:
        async with (
            control_plane(keys_dir, Handler(), max_message_size=2**16) as (_, endpoint),
            agents(keys_dir, endpoint, "h1") as (agent,),
        ):
            await agent.socket.send(b"\x00" * 2**17)
            entry = await logged(logs, "agent_connection_dropped", log_level="warning")
            assert "over 65536 bytes" in entry["reason"]
            await agent.heartbeat()  # ZeroMQ reconnected it

    run(scenario)


# --- the agent's DEALER ------------------------------------------------------------------------


class Coordinator:
    """The test's side of a coordinator: a CurveZMQ ROUTER with the coordinator's key pair."""

    def __init__(self, keys_dir: Path) -> None:
        self._context = zmq.asyncio.Context()
        own = keys.coordinator_keypair(keys_dir)
        self.socket = self._context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.curve_server = True
        self.socket.curve_publickey = own.public
        self.socket.curve_secretkey = own.secret
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"

    def close(self) -> None:
        self.socket.close(0)
        self._context.term()


@pytest.mark.parametrize(
    ("frames", "event"),
    [
        ([b"\xff\xff\xff"], "control_bad_message"),
        ([b""], "control_bad_message"),
        ([b"\x72\x00"], "control_bad_message"),  # field 14: in no CoordinatorMessage's oneof
        ([b"one", b"two"], "control_bad_envelope"),
    ],
    ids=["not-protobuf", "empty", "unknown-oneof-member", "two-frames"],
)
def test_the_agent_refuses_a_frame_that_is_no_message_and_takes_the_next(
    keys_dir: Path, frames: list[bytes], event: str
) -> None:
    async def scenario(logs: Logs) -> None:
        coordinator = Coordinator(keys_dir)
        link = CoordinatorLink(coordinator.endpoint, keys_dir, "h1", "h1")
        try:
            link.connect()
            hello = control_pb2.AgentMessage(heartbeat=control_pb2.Heartbeat(host="h1"))
            while not await link.send(hello):  # sent once the handshake is done
                await asyncio.sleep(0.01)
            identity, frame = await coordinator.socket.recv_multipart()
            assert (identity, decode_agent_message(frame)) == (b"h1", hello)

            await coordinator.socket.send_multipart([identity, *frames])
            assert await link.receive(timeout=WAIT) is None
            await logged(logs, event, log_level="warning")

            ack = control_pb2.CoordinatorMessage(heartbeat_ack=control_pb2.HeartbeatAck(known=True))
            await coordinator.socket.send_multipart([identity, encode(ack)])
            assert await link.receive(timeout=WAIT) == ack
        finally:
            link.close()
            coordinator.close()

    run(scenario)
