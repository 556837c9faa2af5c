"""CurveZMQ credentials for the control plane.

Layout under the keys directory::

    coordinator.key          coordinator public key (agents need it)
    coordinator.key_secret   coordinator key pair (only the coordinator reads it)
    agents/NAME.key          an allowed agent's public key (the coordinator's allow list)
    agents/NAME.key_secret   that agent's key pair (only that agent reads it)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import zmq.auth

from crctl.errors import ConfigError

COORDINATOR = "coordinator"


@dataclass(frozen=True)
class KeyPair:
    public: bytes
    secret: bytes


def _create(directory: Path, name: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    if not (directory / f"{name}.key_secret").exists():
        zmq.auth.create_certificates(str(directory), name)
    os.chmod(directory / f"{name}.key_secret", 0o600)


def init_keys(keys_dir: Path, agent_names: list[str]) -> None:
    """Create the coordinator's key pair and one per agent name; existing keys are kept."""
    _create(keys_dir, COORDINATOR)
    for name in agent_names:
        _create(keys_dir / "agents", name)


def _load(path: Path, *, secret: bool) -> KeyPair:
    try:
        public, secret_key = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot read key {path}: {exc}; create keys with `crctl keys init`"
        ) from None
    if secret and not secret_key:
        raise ConfigError(f"{path} holds no secret key")
    return KeyPair(public=public, secret=secret_key or b"")


def coordinator_keypair(keys_dir: Path) -> KeyPair:
    return _load(keys_dir / f"{COORDINATOR}.key_secret", secret=True)


def coordinator_public_key(keys_dir: Path) -> bytes:
    return _load(keys_dir / f"{COORDINATOR}.key", secret=False).public


def agent_keypair(keys_dir: Path, name: str) -> KeyPair:
    return _load(keys_dir / "agents" / f"{name}.key_secret", secret=True)


def allowed_agent_keys(keys_dir: Path) -> dict[bytes, str]:
    """Public key (z85) -> agent key name, for every agent in the allow list."""
    allowed: dict[bytes, str] = {}
    agents_dir = keys_dir / "agents"
    if not agents_dir.is_dir():
        return allowed
    for path in sorted(agents_dir.glob("*.key")):
        allowed[_load(path, secret=False).public] = path.stem
    return allowed
