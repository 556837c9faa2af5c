"""One typed, frozen configuration object for every crctl process.

Precedence, lowest first: the defaults below < a TOML file (``--config`` or ``CRCTL_CONFIG``)
< ``CRCTL_<KEY>`` environment variables < command-line flags. The same key names are used
everywhere: ``heartbeat_interval`` is ``heartbeat_interval = 1.0`` in the file,
``CRCTL_HEARTBEAT_INTERVAL=1.0`` in the environment and ``--heartbeat-interval 1.0`` on the
command line.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from crctl.errors import ConfigError

ENV_PREFIX = "CRCTL_"
CONFIG_FILE_ENV = "CRCTL_CONFIG"


@dataclass(frozen=True, kw_only=True)
class Config:
    # The coordinator's gRPC API on a Unix socket every local user may call: the kernel tells
    # the coordinator who calls (crctl.identity). Clients call here unless api_address says.
    api_socket: Path = Path("/run/crctl/api.sock")
    # Where clients call the API: "" (the api_socket) or HOST:PORT (TLS with a client
    # certificate: api_tls_* below).
    api_address: str = ""
    # The coordinator also serves the API over TCP here ("" = not at all), only with mutual TLS:
    # its certificate and CA in keys_dir/api/ (`crctl keys api-init`).
    api_tcp_address: str = ""
    # The coordinator's Prometheus metrics over HTTP (GET /metrics) at HOST:PORT, e.g.
    # "127.0.0.1:9464" ("" = not served). No TLS, no authentication: bind it where only the
    # monitoring system reaches it.
    metrics_address: str = ""
    # Admins besides root (comma-separated user / group names or numbers): they may act on
    # every job.
    admin_users: str = ""
    admin_groups: str = ""
    # Restart plugins a caller may name (--plugin module:Class): modules the admin put here,
    # on each agent's host (they run as root).
    plugin_dir: Path = Path("/etc/crctl/plugins")
    # The coordinator's ZeroMQ endpoint for agents: it binds this, agents connect to it.
    control_endpoint: str = "tcp://127.0.0.1:50052"
    # The coordinator's durable state (SQLite).
    state_db: Path = Path("/var/lib/crctl/coordinator.db")
    # Where checkpoints are stored: the same path on every host, on a shared file system or
    # on each node's own disk (node-local: a restart on another host fetches the images from
    # the hosts that hold them). The coordinator keeps each checkpoint's manifest in its own.
    checkpoint_dir: Path = Path("/var/lib/crctl/checkpoints")
    # Copies of each host's images the coordinator has other hosts fetch after a commit (off
    # the checkpoint's critical path), so that a checkpoint survives the loss of the host
    # that dumped it (0: none; 1: one partner copy).
    replicas: int = 0
    # Seconds before a partner copy or a drop of a retired checkpoint's images that failed
    # (a host down, a full disk) is tried again.
    image_retry_after: float = 60.0
    # The TCP port on which an agent serves the checkpoint images it holds to other agents
    # (on its host's first address).
    image_port: int = 50053
    # CurveZMQ keys: coordinator.key(_secret) and agents/<name>.key(_secret).
    keys_dir: Path = Path("/etc/crctl/keys")
    # A client's TLS files for a TCP API address (crctl keys api-client): the API's CA
    # certificate, the client's certificate and its key; unset: no TLS.
    api_tls_ca: Path | None = None
    api_tls_cert: Path | None = None
    api_tls_key: Path | None = None
    # This agent's key pair name under keys_dir/agents/ (defaults to the host name).
    agent_key: str = ""
    # The agent's identity; defaults to the machine's host name.
    host: str = field(default_factory=socket.gethostname)
    # Seconds between an agent's heartbeats.
    heartbeat_interval: float = 1.0
    # Seconds of silence after which the coordinator reports an agent lost.
    agent_lost_after: float = 5.0
    # Seconds the prepare phase of a checkpoint may take (overridden per request by --timeout).
    checkpoint_timeout: float = 60.0
    # Seconds agents have to acknowledge a commit.
    commit_timeout: float = 30.0
    # Committed checkpoints kept per job; older ones are deleted after a newer one commits.
    retain_checkpoints: int = 3
    # Seconds a finished checkpoint or restart operation (and a request id) is remembered.
    operations_keep_for: float = 7 * 24 * 3600.0
    # Scratch space of an agent (working image copies, rank pipes).
    agent_work_dir: Path = Path("/var/lib/crctl/agent")
    # Folders whose files are each host's own (comma-separated; the agent's work dir always
    # is): the files ranks use there go with their checkpoint, and a restart elsewhere
    # recreates them. "" where they are shared (one machine, or /tmp on shared storage).
    host_private_paths: str = "/tmp,/dev/shm"
    # "auto" (JSON when not a terminal), "json" or "console".
    log_format: str = "auto"
    log_level: str = "info"

    def agent_key_name(self) -> str:
        return self.agent_key or self.host

    def client_address(self) -> str:
        """Where a client calls: api_address, else the coordinator's Unix socket."""
        return self.api_address or f"unix:{self.api_socket}"

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


KEYS: tuple[str, ...] = tuple(f.name for f in fields(Config))
_LOG_FORMATS = ("auto", "json", "console")
_LOG_LEVELS = ("debug", "info", "warning", "error")


_TYPES: dict[str, type] = typing.get_type_hints(Config)
_ZERO_ALLOWED = frozenset({"replicas"})  # whole numbers that may be 0


def _field_type(name: str) -> type:
    """The key's type; an optional key (``X | None``) is coerced as an ``X``."""
    wanted = _TYPES[name]
    given = [arg for arg in typing.get_args(wanted) if arg is not type(None)]
    return given[0] if len(given) == 1 else wanted


def _coerce(name: str, value: object, source: str) -> object:
    """Turn a raw value from a file, the environment or a flag into the key's type."""
    wanted = _field_type(name)
    try:
        if wanted is Path:
            if not isinstance(value, str | Path) or str(value) == "":
                raise ValueError("expected a path")
            return Path(value)
        if wanted is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("expected a whole number")
            whole = int(value)  # type: ignore[call-overload]
            least = 0 if name in _ZERO_ALLOWED else 1
            if whole < least:
                raise ValueError(f"must be at least {least}")
            return whole
        if wanted is float:
            if isinstance(value, bool):
                raise ValueError("expected a number")
            number = float(value)  # type: ignore[arg-type]
            if number <= 0:
                raise ValueError("must be greater than 0")
            return number
        if wanted is str:
            if not isinstance(value, str):
                raise ValueError("expected a string")
            return value
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: bad value {value!r} for {name}: {exc}") from None
    raise ConfigError(f"{source}: {name} has an unsupported type")  # pragma: no cover


def _validated(layer: Mapping[str, object], source: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in layer.items():
        if key not in KEYS:
            raise ConfigError(f"{source}: unknown key {key!r} (known: {', '.join(KEYS)})")
        if value is None:
            continue
        out[key] = _coerce(key, value, source)
    return out


def _file_layer(path: Path | None, env: Mapping[str, str]) -> dict[str, object]:
    if path is None and env.get(CONFIG_FILE_ENV):
        path = Path(env[CONFIG_FILE_ENV])
    if path is None:
        return {}
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return _validated(data, f"config file {path}")


def _env_layer(env: Mapping[str, str]) -> dict[str, object]:
    layer = {key: env[ENV_PREFIX + key.upper()] for key in KEYS if ENV_PREFIX + key.upper() in env}
    return _validated(layer, "environment")


def host_and_port(value: str, key: str) -> tuple[str, int]:
    """``HOST:PORT`` (an IPv6 host in brackets: ``[::1]:9464``) as (host, port); port 0 means
    any free port. A ConfigError naming ``key`` otherwise."""
    host, colon, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{key} must be HOST:PORT (e.g. 127.0.0.1:9464), not {value!r}")
    return host, int(port)


def load_config(
    *,
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, object] | None = None,
) -> Config:
    """Build the Config from defaults, a file, the environment and flags (in that order)."""
    environ = os.environ if env is None else env
    merged: dict[str, object] = {}
    merged.update(_file_layer(file, environ))
    merged.update(_env_layer(environ))
    merged.update(_validated(flags or {}, "command line"))
    config = Config(**merged)  # type: ignore[arg-type]
    if config.log_format not in _LOG_FORMATS:
        raise ConfigError(f"log_format must be one of {', '.join(_LOG_FORMATS)}")
    if config.log_level not in _LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(_LOG_LEVELS)}")
    if config.metrics_address:
        host_and_port(config.metrics_address, "metrics_address")
    if config.replicas > 1:
        raise ConfigError(
            f"replicas must be 0 or 1 (one partner copy of each host's images), not "
            f"{config.replicas}"
        )
    return config
