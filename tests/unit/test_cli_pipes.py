"""The CLI's output piped into a reader that stops early (`| head -1`, a pager quit) ends
quietly, as Unix tools do: no traceback, exit status 141 (128 + SIGPIPE)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_into_closed_pipe(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m cli ARGV` with stdout a pipe whose reader is already gone: every write
    (the command's, or the interpreter's last flush) meets EPIPE."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        return subprocess.run(
            [sys.executable, "-m", "cli", *argv],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=60,
            check=False,
        )
    finally:
        os.close(writer)


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--help"], id="help"),  # argparse prints, then exits
        pytest.param(["testbed", "status", "--json", "--dir", "/nonexistent"], id="command"),
    ],
)
def test_output_into_a_closed_pipe_ends_quietly(argv: list[str]) -> None:
    result = run_into_closed_pipe(*argv)
    assert "Traceback" not in result.stderr
    assert "BrokenPipeError" not in result.stderr
    assert result.stderr == ""
    assert result.returncode == 128 + signal.SIGPIPE
