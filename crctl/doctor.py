"""Host checks: can this machine checkpoint and restore? Used by ``crctl doctor`` and by agents,
which report the names of the checks that pass as their capabilities."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from crctl import nftables

MIN_CRIU = (4, 2)
# The check (and so the agent capability) that lets a host restore ranks lazily (post-copy).
LAZY_PAGES = "lazy-pages"
# Capability bits (linux/capability.h) the checkpoint path needs when not plain root.
_CAPS = {
    "CAP_NET_ADMIN": 12,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_ADMIN": 21,
    "CAP_CHECKPOINT_RESTORE": 40,
}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def _run(*argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def criu_version() -> str:
    """CRIU's version as "4.1.1", or "" when CRIU is not installed."""
    if shutil.which("criu") is None:
        return ""
    out = _run("criu", "--version").stdout
    match = re.search(r"Version:\s*([0-9][0-9.]*)", out)
    return match.group(1) if match else ""


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def check_privileges() -> Check:
    status = Path("/proc/self/status").read_text()
    match = re.search(r"^CapEff:\s*([0-9a-f]+)", status, re.M)
    effective = int(match.group(1), 16) if match else 0
    missing = [
        name
        for name, bit in _CAPS.items()
        if not effective & (1 << bit) and name != "CAP_CHECKPOINT_RESTORE"
    ]
    if os.geteuid() == 0 and not missing:
        return Check("privileges", True, "running as root with the needed capabilities")
    return Check(
        "privileges",
        False,
        f"euid={os.geteuid()}, missing {', '.join(missing) or '-'}",
        "run crctl as root (CRIU needs CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_NET_ADMIN)",
    )


def check_criu() -> Check:
    version = criu_version()
    if not version:
        return Check(
            "criu",
            False,
            "criu is not on PATH",
            "run deploy/install-criu.sh (installs or builds CRIU >= 4.2)",
        )
    if _version_tuple(version) < MIN_CRIU:
        return Check(
            "criu",
            False,
            f"CRIU {version} is too old (need >= 4.2: older releases cannot dump TCP sockets "
            "on kernels >= 6.16)",
            "run deploy/install-criu.sh to build CRIU 4.2.1",
        )
    return Check("criu", True, f"CRIU {version} at {shutil.which('criu')}")


def check_criu_kernel() -> Check:
    if shutil.which("criu") is None:
        return Check("criu_check", False, "criu is not installed", "run deploy/install-criu.sh")
    result = _run("criu", "check")
    text = (result.stdout + result.stderr).strip()
    if result.returncode == 0 and "Looks good" in text:
        return Check("criu_check", True, "criu check: looks good")
    last = text.splitlines()[-1] if text else f"exit {result.returncode}"
    return Check(
        "criu_check",
        False,
        f"criu check failed: {last}",
        "see `criu check --all`; the kernel lacks a feature CRIU needs",
    )


def check_pycriu() -> Check:
    try:
        import pycriu  # noqa: F401
    except Exception as exc:  # any import failure means the same fix
        return Check(
            "pycriu",
            False,
            f"pycriu does not import: {exc}",
            "run deploy/install-criu.sh --python <this environment's python>",
        )
    return Check("pycriu", True, "pycriu imports")


def check_nft() -> Check:
    problem = nftables.available()
    if problem is not None:
        return Check(
            "nft",
            False,
            f"nftables does not work through libnftables: {problem}",
            "apt-get install nftables libnftables1; load nf_tables; run as root",
        )
    return Check("nft", True, "nftables works (libnftables)")


def run_is_tmpfs() -> bool:
    """Whether /run is a tmpfs (the last mount there is the one in use): only then does CRIU
    keep what it probed of the kernel in /run/criu.kdat."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return False
    found = [f[2] for f in (line.split() for line in mounts) if len(f) > 2 and f[1] == "/run"]
    return bool(found) and found[-1] == "tmpfs"


def check_criu_cache() -> Check:
    if run_is_tmpfs():
        return Check("criu-cache", True, "/run is a tmpfs: CRIU caches its kernel probes")
    return Check(
        "criu-cache",
        False,
        "/run is not a tmpfs: every CRIU run probes the kernel again (tens of ms per dump "
        "and restore)",
        "mount a tmpfs on /run (systemd does)",
        required=False,
    )


def check_lazy_pages() -> Check:
    if shutil.which("criu") is None:
        return Check(LAZY_PAGES, False, "criu is not installed", "run deploy/install-criu.sh")
    result = _run("criu", "check", "--feature", "uffd-noncoop")
    if result.returncode == 0:
        return Check(LAZY_PAGES, True, "userfaultfd: restored ranks run while memory follows")
    return Check(
        LAZY_PAGES,
        False,
        "the kernel's userfaultfd cannot serve CRIU's lazy restore: restarts restore all "
        "memory before the ranks run",
        "use a kernel with CONFIG_USERFAULTFD (and uffd non-cooperative events)",
        required=False,
    )


def check_freezer() -> Check:
    v1 = Path("/sys/fs/cgroup/freezer")
    if (
        (v1 / "freezer.state").exists()
        or (v1.is_dir() and any(v1.glob("*/freezer.state")))
        or (v1 / "cgroup.procs").exists()
    ):
        return Check("freezer", True, f"cgroup v1 freezer at {v1}")
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    if v2.exists():
        return Check("freezer", True, "cgroup v2 (cgroup.freeze)")
    return Check(
        "freezer",
        False,
        "no cgroup freezer found",
        "mount the cgroup v1 freezer or cgroup v2 at /sys/fs/cgroup",
    )


def check_namespaces() -> Check:
    missing = [ns for ns in ("net", "pid", "mnt") if not Path(f"/proc/self/ns/{ns}").exists()]
    tools = [t for t in ("unshare", "nsenter", "chrt", "ip") if shutil.which(t) is None]
    if missing or tools:
        return Check(
            "namespaces",
            False,
            f"missing namespaces {missing or '-'}, tools {tools or '-'}",
            "apt-get install util-linux iproute2; use a kernel with namespaces",
        )
    result = _run("unshare", "--pid", "--fork", "--mount-proc", "true")
    if result.returncode != 0:
        return Check(
            "namespaces",
            False,
            f"cannot create a PID namespace: {result.stderr.strip()}",
            "run as root on a host that allows PID namespaces",
        )
    return Check("namespaces", True, "net, pid and mount namespaces usable")


def check_rank_init() -> Check:
    """A rank's init and the tools it runs its owner's command with (agent/rank_launcher.py)."""
    missing = [
        t
        for t in ("/usr/bin/tini", "/usr/bin/setpriv", "/usr/bin/env")
        if not os.access(t, os.X_OK)
    ]
    if missing:
        return Check(
            "rank-init",
            False,
            f"missing {', '.join(missing)}: ranks cannot be started",
            "run deploy/install-criu.sh (installs tini and util-linux)",
        )
    return Check("rank-init", True, "tini runs each rank's command as its owner")


SLURM_TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol")


def check_slurm() -> Check:
    """Slurm, for `crctl run` in batch scripts and `crctl testbed up --slurm` (optional)."""
    path = "/usr/sbin:/usr/bin:/sbin:/bin"
    missing = [t for t in SLURM_TOOLS if shutil.which(t, path=path) is None]
    if missing:
        return Check(
            "slurm",
            False,
            f"Slurm is not installed ({', '.join(missing)} missing): only needed for batch "
            "jobs and the testbed's --slurm",
            "apt-get install slurm-wlm munge (deploy/setup.sh does)",
            required=False,
        )
    return Check("slurm", True, "Slurm's daemons and commands are installed")


ALL_CHECKS: tuple[Callable[[], Check], ...] = (
    check_privileges,
    check_criu,
    check_criu_kernel,
    check_pycriu,
    check_nft,
    check_criu_cache,
    check_lazy_pages,
    check_freezer,
    check_namespaces,
    check_rank_init,
    check_slurm,
)


def run_checks() -> list[Check]:
    return [check() for check in ALL_CHECKS]
