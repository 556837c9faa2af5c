"""Runs the agent process: registers with the coordinator, sends heartbeats, re-registers when
the coordinator has forgotten it, and dispatches the coordinator's orders."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Protocol

import structlog

from agent import criu
from agent.engine import HostEngine
from agent.host_images import HostImages
from agent.hostinfo import agent_info
from agent.link import CoordinatorLink
from agent.orders import Orders
from agent.plugin_runner import load_plugins
from crctl import keys
from crctl.config import Config
from crctl.errors import ConfigError, CrctlError
from crctl.v1 import control_pb2

log = structlog.get_logger()


class Link(Protocol):
    """The agent's end of the control plane (agent.link.CoordinatorLink over CurveZMQ)."""

    def connect(self) -> None: ...

    async def send(self, message: control_pb2.AgentMessage) -> bool: ...

    async def receive(self, timeout: float) -> control_pb2.CoordinatorMessage | None: ...

    async def watch(self) -> None: ...

    def close(self) -> None: ...


class Agent:
    def __init__(
        self,
        config: Config,
        *,
        link: Link | None = None,
        info: control_pb2.AgentInfo | None = None,
        engine: HostEngine | None = None,
    ) -> None:
        self._config = config
        self._link: Link = link or CoordinatorLink(
            config.control_endpoint, config.keys_dir, config.agent_key_name(), config.host
        )
        self._info = info or agent_info(config.host, config.plugin_dir)
        self._images = HostImages(
            host=config.host, store_root=config.checkpoint_dir, keypair=_own_keypair(config)
        )
        self._orders = Orders(
            host=config.host,
            addresses=list(self._info.addresses),
            work_dir=config.agent_work_dir,
            send=self._link.send,
            engine=engine,
            plugin_dir=config.plugin_dir,
            images=self._images,
            private_paths=config.host_private_paths,
        )
        self._interval = config.heartbeat_interval
        self._registered = False
        self._sequence = 0

    async def _register(self) -> None:
        message = control_pb2.AgentMessage()
        message.register.info.CopyFrom(self._info)
        message.register.info.ranks.extend(self._orders.running())
        message.register.info.awaiting_decision.extend(self._orders.checkpoints.awaiting())
        message.register.info.restoring.extend(self._orders.restores.active())
        if await self._link.send(message):
            log.info("agent_registering", addresses=list(self._info.addresses))

    async def _heartbeat(self) -> None:
        self._sequence += 1
        message = control_pb2.AgentMessage()
        message.heartbeat.host = self._config.host
        message.heartbeat.sequence = self._sequence
        message.heartbeat.awaiting_decision.extend(self._orders.checkpoints.awaiting())
        message.heartbeat.restoring.extend(self._orders.restores.active())
        await self._link.send(message)

    def _on_message(self, message: control_pb2.CoordinatorMessage) -> bool:
        """Handle one message; returns True when the agent must register (again)."""
        kind = message.WhichOneof("body")
        if kind == "register_ack":
            ack = message.register_ack
            if not ack.accepted:
                log.error("agent_registration_refused", reason=ack.reason)
                return False
            self._registered = True
            self._images.allow(list(ack.agent_keys))
            if ack.heartbeat_interval > 0:
                self._interval = ack.heartbeat_interval
            log.info("agent_registered", heartbeat_interval=self._interval)
        elif kind == "heartbeat_ack":
            if not message.heartbeat_ack.known:
                log.warning("agent_unknown_to_coordinator")
                self._registered = False
                return True
        else:
            self._orders.handle(message)
        return False

    def _serve_images(self) -> None:
        """The image server on the host's first address (loopback on a host with none)."""
        address = self._info.addresses[0] if self._info.addresses else "127.0.0.1"
        try:
            endpoint = self._images.serve(address, self._config.image_port)
        except CrctlError as exc:
            log.error("image_server_not_started", reason=exc.message)
            return
        self._info.image_endpoint = endpoint
        self._info.image_server_key = self._images.server_key if endpoint else b""

    async def run(self, stop: asyncio.Event) -> None:
        self._orders.recover()
        await self._orders.finish_earlier_restores()
        self._serve_images()
        self._link.connect()
        watcher = asyncio.create_task(self._link.watch())
        loop = asyncio.get_running_loop()
        next_beat = loop.time()
        try:
            while not stop.is_set():
                now = loop.time()
                if now >= next_beat:
                    if self._registered:
                        await self._heartbeat()
                    else:
                        await self._register()
                    next_beat = now + self._interval
                message = await self._link.receive(timeout=max(0.0, next_beat - loop.time()))
                if message is not None and self._on_message(message):
                    await self._register()
            # A clean stop (SIGTERM) undoes what is under way; a cancelled (killed) agent
            # leaves everything to the next one, as a dead process would.
            await self._orders.close()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            self._link.close()
            self._images.close()


def _own_keypair(config: Config) -> keys.KeyPair | None:
    """The agent's control-plane key pair, which its image server and fetches use too; None
    where it has none (the in-process tier's agents)."""
    try:
        return keys.agent_keypair(config.keys_dir, config.agent_key_name())
    except ConfigError:
        return None


async def serve(config: Config) -> None:
    agent = Agent(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("agent_started", control_endpoint=config.control_endpoint)
    await agent.run(stop)
    log.info("agent_stopped")


def _warm_up() -> None:
    """Import what a checkpoint or restart needs (pycriu, the plugins) and have CRIU's kernel
    probes cached now, not on the clock of the first checkpoint or restart."""
    try:
        load_plugins([], Path())
    except CrctlError as exc:
        log.error("plugins_unavailable", error=str(exc))
    try:
        criu.seed_probe_cache(criu.criu_binary(None))
    except CrctlError as exc:
        log.error("criu_unavailable", error=str(exc))


def run(config: Config) -> None:
    _warm_up()
    asyncio.run(serve(config))
