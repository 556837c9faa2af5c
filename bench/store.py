"""The benchmarks' testbed, with its state (and so crctl's checkpoint store and the agents'
working copies) on a tmpfs by default, as it is on a standard host where /run is a tmpfs; the
plain CRIU runs write into the same file system. On this kind of VM /run is the root disk
(ext4 with online discard), whose write-back and discards stall whichever side happens to run
at the time. ``--store-on-disk`` keeps the testbed where it is."""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from testbed import bed


def add_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store-on-disk",
        action="store_true",
        help="keep the testbed's state (checkpoint store included) on /run as it is",
    )


@contextlib.contextmanager
def bench_testbed(
    hosts: int, *, on_disk: bool, private_storage: bool = False, replicas: int = 0
) -> Iterator[tuple[bed.State, Path]]:
    """A testbed of ``hosts`` hosts and a scratch folder for plain CRIU runs beside its
    checkpoint store; everything is removed afterwards."""
    directory = bed.DEFAULT_DIR
    if bed.status(directory) is not None:
        raise SystemExit("a testbed is already up; run `crctl testbed down` first")
    mounted = False
    if not on_disk:
        directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=75%,mode=0755", "crctl-bench", str(directory)],
            check=True,
        )
        mounted = True
    try:
        state = bed.up(hosts, directory, private_storage=private_storage, replicas=replicas)
        yield state, Path(tempfile.mkdtemp(prefix="plain-criu-", dir=directory))
    finally:
        bed.down(directory)  # removes the scratch folder too
        if mounted:
            subprocess.run(["umount", "--lazy", str(directory)], capture_output=True, check=False)
