"""Parsing the CLI's structured arguments, with errors that name the flag and the bad value."""

from __future__ import annotations

from crctl.errors import ConfigError


def key_values(items: list[str], flag: str) -> dict[str, str]:
    """Repeated ``--flag NAME=VALUE`` arguments; a value may itself hold "=" or ","."""
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"bad {flag} {item!r}: expected NAME=VALUE")
        parsed[key] = value
    return parsed


def host_map(text: str) -> dict[str, str]:
    """ "h1=h4,h2=h5" -> {"h1": "h4", "h2": "h5"}, refusing malformed or repeated entries."""
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise ConfigError(f"malformed host map entry {item!r}: expected OLD=NEW")
        if old in pairs:
            raise ConfigError(f"host map entry names {old} twice")
        pairs[old] = new
    return pairs
