"""The CLI's structured arguments: host maps, and NAME=VALUE options whose values may hold
commas (a list of files for the host-files plugin) or "="."""

import pytest

from cli.arguments import host_map, key_values
from crctl.errors import ConfigError


def test_a_host_map_lists_moves() -> None:
    assert host_map("h1=h4, h2=h5,") == {"h1": "h4", "h2": "h5"}
    assert host_map("") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [("h1", "malformed host map entry 'h1'"), ("h1=", "malformed"), ("h1=h4,h1=h5", "twice")],
)
def test_a_malformed_host_map_is_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        host_map(text)


def test_option_values_keep_their_commas_and_equal_signs() -> None:
    options = key_values(["rewrite_files=/etc/a,/etc/b", "expr=x=1"], "--plugin-option")
    assert options == {"rewrite_files": "/etc/a,/etc/b", "expr": "x=1"}


def test_an_option_without_a_name_is_refused_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match="bad --env 'noequals'"):
        key_values(["noequals"], "--env")
