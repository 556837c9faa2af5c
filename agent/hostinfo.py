"""What an agent reports about its host when it registers."""

from __future__ import annotations

import json
import os
import subprocess

from crctl import __version__
from crctl.doctor import criu_version, run_checks
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


def agent_info(host: str) -> control_pb2.AgentInfo:
    return control_pb2.AgentInfo(
        host=host,
        addresses=host_addresses(),
        criu_version=criu_version(),
        capabilities=[check.name for check in run_checks() if check.ok],
        agent_version=__version__,
        pid=os.getpid(),
    )
