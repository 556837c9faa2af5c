"""Network plumbing for emulated hosts: a bridge in the root namespace and one network namespace
per host, joined by veth pairs. Addresses come from 198.18.0.0/15 (the benchmarking range)."""

from __future__ import annotations

import ipaddress
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

from crctl.errors import PrerequisiteError

NETNS_DIR = Path("/run/netns")
# Hosts with storage of their own (`crctl testbed up --private-storage`) each also have a mount
# namespace, kept alive by a bind mount of it here (as `ip netns` keeps network namespaces).
MNTNS_DIR = Path("/run/crctl-mntns")
SUBNET = ipaddress.IPv4Network("198.18.0.0/24")
BRIDGE_ADDRESS = SUBNET.network_address + 1
MAX_HOSTS = 200


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise PrerequisiteError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")
    return result


def host_address(index: int, subnet: ipaddress.IPv4Network = SUBNET) -> ipaddress.IPv4Address:
    """Host hN's address: 198.18.0.(10 + N) (or the same offset in another /24)."""
    if not 1 <= index <= MAX_HOSTS:
        raise ValueError(f"host index {index} out of range 1..{MAX_HOSTS}")
    return subnet.network_address + 10 + index


def bridge_address(subnet: ipaddress.IPv4Network = SUBNET) -> ipaddress.IPv4Address:
    """The bridge's own address in a subnet: its first host address."""
    return subnet.network_address + 1


def netns_path(namespace: str) -> Path:
    return NETNS_DIR / namespace


def link_exists(name: str) -> bool:
    return _ip("link", "show", "dev", name, check=False).returncode == 0


def create_bridge(bridge: str, subnet: ipaddress.IPv4Network = SUBNET) -> None:
    """A bridge holding ``bridge_address(subnet)`` so the root namespace reaches the hosts."""
    if not link_exists(bridge):
        _ip("link", "add", bridge, "type", "bridge")
    _ip("addr", "replace", f"{bridge_address(subnet)}/{subnet.prefixlen}", "dev", bridge)
    _ip("link", "set", bridge, "up")


def delete_link(name: str) -> None:
    if link_exists(name):
        _ip("link", "delete", name, check=False)


def create_host(
    namespace: str,
    veth: str,
    bridge: str,
    address: ipaddress.IPv4Address,
    subnet: ipaddress.IPv4Network = SUBNET,
) -> None:
    """A namespace with lo up and eth0 (address/prefix of ``subnet``, default route via the
    bridge's address in ``subnet``)."""
    if not netns_path(namespace).exists():
        _ip("netns", "add", namespace)
    delete_link(veth)
    _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
    _ip("link", "set", veth, "master", bridge)
    _ip("link", "set", veth, "up")
    _ip("-n", namespace, "link", "set", "lo", "up")
    _ip("-n", namespace, "addr", "add", f"{address}/{subnet.prefixlen}", "dev", "eth0")
    _ip("-n", namespace, "link", "set", "eth0", "up")
    _ip("-n", namespace, "route", "add", "default", "via", str(bridge_address(subnet)))


def namespaces_matching(pattern: str) -> list[str]:
    """Names of existing network namespaces that fully match the regular expression."""
    result = _ip("netns", "list", check=False)
    names = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    return [name for name in names if re.fullmatch(pattern, name)]


def pids_in(namespace: str) -> list[int]:
    result = _ip("netns", "pids", namespace, check=False)
    return [int(p) for p in result.stdout.split() if p.isdigit()]


def delete_namespace(namespace: str) -> None:
    if netns_path(namespace).exists():
        _ip("netns", "delete", namespace, check=False)


def mntns_path(namespace: str) -> Path:
    return MNTNS_DIR / namespace


def nsenter_prefix(namespace: str) -> list[str]:
    """Run a command in the host's network namespace, and in its mount namespace if it has one
    (not `ip netns exec`, whose mount namespace's mounts are slaves of the root namespace's:
    CRIU refuses to dump there, "has unreachable sharing")."""
    mount = mntns_path(namespace)
    entered = [f"--mount={mount}"] if _is_mountpoint(mount) else []
    return ["nsenter", f"--net={netns_path(namespace)}", *entered, "--"]


def _is_mountpoint(path: Path) -> bool:
    try:
        with open("/proc/self/mountinfo") as mountinfo:
            return any(line.split()[4] == str(path) for line in mountinfo)
    except OSError:
        return False


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PrerequisiteError(f"`{' '.join(argv)}` failed: {result.stderr.strip()}")


def create_private_storage(
    namespace: str, binds: dict[Path, Path], keep: Sequence[Path] = ()
) -> None:
    """A mount namespace for the host, every mount in it private (none propagates either way,
    so CRIU sees no sharing it cannot reach), with each target of ``binds`` covered by its
    source (a folder of the host's own), e.g. {/tmp: <host's tmp>}, except the folders of
    ``keep`` under a target (crctl's own checkout in /tmp, say), which stay what every host
    sees. Entered by nsenter_prefix."""
    MNTNS_DIR.mkdir(parents=True, exist_ok=True)
    if not _is_mountpoint(MNTNS_DIR):
        _run(["mount", "--bind", str(MNTNS_DIR), str(MNTNS_DIR)])
    _run(["mount", "--make-private", str(MNTNS_DIR)])
    anchor = mntns_path(namespace)
    anchor.touch()
    steps = []
    outermost = [k for k in keep if not any(k != o and k.is_relative_to(o) for o in keep)]
    for target, source in binds.items():
        for shared in outermost:
            if shared.is_relative_to(target) and shared != target:
                inside = source / shared.relative_to(target)
                inside.mkdir(parents=True, exist_ok=True)
                steps.append(f'mount --bind "{shared}" "{inside}"')
        steps.append(f'mount --rbind "{source}" "{target}"')
    script = "".join(f"{step} && " for step in steps)
    _run(["unshare", f"--mount={anchor}", "--propagation", "private", "--", "sh", "-c",
          script + "true"])  # fmt: skip


def delete_private_storage(namespace: str) -> None:
    """Unmount the host's mount namespace (its mounts go with its last process) and, once no
    host has one, the folder that held them. Idempotent."""
    anchor = mntns_path(namespace)
    if _is_mountpoint(anchor):
        subprocess.run(["umount", str(anchor)], capture_output=True, check=False)
    anchor.unlink(missing_ok=True)
    if MNTNS_DIR.is_dir() and not any(MNTNS_DIR.iterdir()):
        if _is_mountpoint(MNTNS_DIR):
            subprocess.run(["umount", str(MNTNS_DIR)], capture_output=True, check=False)
        MNTNS_DIR.rmdir()
