"""`crctl demo`: the embedded-defaults tour on one machine, using only the public CLI paths.

Today: emulated hosts up, agents listed, testbed down. Each step prints what it does."""

from __future__ import annotations

import subprocess
import sys

from testbed import bed


def _show(*args: str) -> None:
    print(f"\n$ crctl {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "cli", *args], check=True)


def run_demo(hosts: int) -> None:
    print(f"== crctl demo: {hosts} emulated hosts on this machine ==", flush=True)
    bed.up(hosts, bed.DEFAULT_DIR)
    try:
        _show("testbed", "status")
        _show("agents")
    finally:
        print("\n$ crctl testbed down", flush=True)
        bed.down(bed.DEFAULT_DIR)
        print("testbed down: nothing left behind")
