"""Host lists as Slurm writes them, wherever crctl takes hosts."""

from __future__ import annotations

import pytest

from crctl.errors import ConfigError
from crctl.hostlists import expand


@pytest.mark.parametrize(
    ("spec", "hosts"),
    [
        ("h1,h2", ["h1", "h2"]),
        ("h2,h1", ["h2", "h1"]),  # rank order, never sorted
        ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
        ("h[5-6],login1", ["h5", "h6", "login1"]),
        ("", []),
    ],
)
def test_lists_expand_in_order(spec: str, hosts: list[str]) -> None:
    assert expand(spec) == hosts


@pytest.mark.parametrize(
    ("spec", "message"), [("node[01-", "bad host list"), ("h1,h[1-2]", "twice")]
)
def test_bad_lists_are_refused(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        expand(spec)
