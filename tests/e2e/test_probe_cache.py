"""CRIU's kernel-probe cache on a host whose /run is not a tmpfs (agent.criu.seed_probe_cache),
tried in a mount namespace of its own with a scratch directory over /run, so that the host's
own /run is never touched: the first call has CRIU write its cache there and stamps it, the next
finds it current, and a real CRIU run then loads it instead of probing."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.e2e

SCENARIO = textwrap.dedent(
    """
    import os, shutil, subprocess, tempfile
    from agent import criu

    scratch = tempfile.mkdtemp(dir="/var/tmp")  # a disk directory, not a tmpfs
    try:
        subprocess.run(["mount", "--bind", scratch, "/run"], check=True)
        binary = criu.criu_binary(None)
        first = criu.seed_probe_cache(binary)
        second = criu.seed_probe_cache(binary)
        size = os.path.getsize("/run/criu.kdat")
        subprocess.run([binary, "check", "-v4", "--log-file", "/run/check.log"], check=False)
        loaded = "Loaded kdat cache from /run/criu.kdat" in open("/run/check.log").read()
        subprocess.run(["umount", "/run"], check=True)
    finally:
        shutil.rmtree(scratch)
    print(first, second, size > 0, loaded)
    """
)


def test_the_cache_is_seeded_once_per_boot_and_criu_loads_it() -> None:
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", SCENARIO],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "seeded fresh True True"
