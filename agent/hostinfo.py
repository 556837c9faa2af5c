"""What an agent reports about its host when it registers."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from agent.plugin_runner import plugin_modules
from crctl import __version__
from crctl.doctor import criu_version, run_checks
from crctl.plugins import PER_RANK_ENDPOINTS, PLUGIN_CAPABILITY
from crctl.v1 import control_pb2


def host_addresses() -> list[str]:
    """The host's global (non-loopback) IPv4 and IPv6 addresses, as `ip` reports them."""
    result = subprocess.run(
        ["ip", "-j", "addr", "show"], capture_output=True, text=True, check=False, timeout=10
    )
    if result.returncode != 0:
        return []
    addresses = []
    for link in json.loads(result.stdout or "[]"):
        for addr in link.get("addr_info", []):
            if addr.get("scope") == "global":
                addresses.append(addr["local"])
    return addresses


def agent_info(host: str, plugin_dir: Path) -> control_pb2.AgentInfo:
    """Capabilities: the host checks that passed, ``plugin:<module>`` for each module in
    ``plugin_dir`` (the plugins a restart may name here), and what this agent's restores do
    (per-rank endpoint rewrites)."""
    return control_pb2.AgentInfo(
        host=host,
        addresses=host_addresses(),
        criu_version=criu_version(),
        capabilities=[
            *(check.name for check in run_checks() if check.ok),
            *(PLUGIN_CAPABILITY + module for module in plugin_modules(plugin_dir)),
            PER_RANK_ENDPOINTS,
        ],
        agent_version=__version__,
        pid=os.getpid(),
    )
