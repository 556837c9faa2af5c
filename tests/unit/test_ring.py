"""The ring workload itself: it passes tokens without error, and it does notice loss,
duplicates and corruption (otherwise the end-to-end tests could not fail)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from testbed.ring import Ring, checksum_after, next_checksum


def _ring(tmp_path: Path, rank: int = 1, size: int = 3) -> Ring:
    args = argparse.Namespace(
        rank=rank,
        peers=",".join(["127.0.0.1"] * size),
        port=0,
        status=str(tmp_path / f"r{rank}.json"),
        interval=0,
        memory_mib=0,
        print_every=0,
    )
    return Ring(args)


def test_three_ranks_on_loopback_pass_tokens_with_no_error(tmp_path: Path) -> None:
    peers = "127.0.0.1,127.0.0.2,127.0.0.3"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "testbed.ring",
                "--rank",
                str(i),
                "--peers",
                peers,
                "--port",
                "17311",
                "--status",
                str(tmp_path / f"{i}.json"),
                "--interval",
                "0.001",
            ]
        )
        for i in range(3)
    ]
    try:
        time.sleep(1.5)
        statuses = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(3)]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    for status in statuses:
        assert status["errors"] == []
        assert status["tokens"] > 10
        assert status["inbound"] and status["outbound"]


def test_a_lost_token_is_recorded(tmp_path: Path) -> None:
    ring = _ring(tmp_path)
    ring.last = (1, next_checksum(0, 1))
    ring._check(7, 0)
    assert ring.errors == ["loss: sequence 7 after 1"]


def test_a_duplicate_token_is_recorded(tmp_path: Path) -> None:
    ring = _ring(tmp_path)
    ring.last = (4, 99)
    ring._check(4, 99)
    assert ring.errors[0].startswith("duplicate")


def test_a_corrupt_checksum_is_recorded(tmp_path: Path) -> None:
    ring = _ring(tmp_path)
    checksum = 12345
    ring.last = (1, checksum)
    ring._check(4, checksum_after(checksum, 1, 3) ^ 1)
    assert ring.errors[0].startswith("corrupt")
    ring.errors.clear()
    ring._check(4, checksum_after(checksum, 1, 3))
    assert ring.errors == []
