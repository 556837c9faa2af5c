"""CRIU's cache of what it probed of the kernel, on hosts where CRIU cannot keep one itself.

CRIU probes the kernel at the start of every run (tens of milliseconds; it even runs iptables)
and keeps the answers in /run/criu.kdat, but only when /run is a tmpfs, so that a reboot (maybe
into another kernel) clears them. Containers and some VMs have /run on the root file system:
there every dump and restore would pay the probes again. On such a host the agent has CRIU write
its cache into a private tmpfs mounted over /run (in a mount namespace of its own) and puts the
file in place, stamped with the boot id and the CRIU binary; a new boot or another CRIU renews
it. CRIU itself still refuses a cache of another layout (it checks size and magic)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
from pathlib import Path

import structlog

from crctl.doctor import run_is_tmpfs

log = structlog.get_logger()

RUN = Path("/run")
CACHE = RUN / "criu.kdat"
STAMP = RUN / "criu.kdat.crctl-stamp"
LOCK = RUN / "criu.kdat.crctl-lock"
_SEED = 'mount -t tmpfs crctl-criu-probe /run && "$0" check >/dev/null 2>&1; cat /run/criu.kdat'


def _stamp(criu: str) -> str:
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    binary = Path(criu).resolve()
    st = binary.stat()
    return f"{boot_id} {binary} {st.st_size} {st.st_mtime_ns}\n"


def seed_probe_cache(criu: str) -> str:
    """Make sure CRIU finds its kernel probes cached; what was done: "tmpfs" (CRIU keeps its
    own), "fresh" (ours is current), "seeded", or "failed" (logged; CRIU just probes)."""
    if run_is_tmpfs():
        return "tmpfs"
    try:
        stamp = _stamp(criu)
        with LOCK.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # agents of emulated hosts start together
            if CACHE.exists() and STAMP.exists() and STAMP.read_text() == stamp:
                return "fresh"
            seeded = subprocess.run(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", _SEED, criu],
                capture_output=True,
                timeout=60,
                check=False,
            ).stdout
            if not seeded:
                log.warning("criu_probe_cache_not_seeded", reason="criu check wrote no cache")
                return "failed"
            temporary = CACHE.with_name(f".{CACHE.name}.crctl-{os.getpid()}")
            temporary.write_bytes(seeded)
            os.chmod(temporary, 0o600)
            os.replace(temporary, CACHE)
            STAMP.write_text(stamp)
    except (OSError, subprocess.SubprocessError) as exc:
        with contextlib.suppress(OSError):
            STAMP.unlink()
        log.warning("criu_probe_cache_not_seeded", reason=str(exc))
        return "failed"
    log.info("criu_probe_cache_seeded", path=str(CACHE), bytes=len(seeded))
    return "seeded"
