"""Argument types for the CLI's parser: each turns one argument into its value or refuses it with
``argparse.ArgumentTypeError``, so that argparse exits 2 with the usage and a message naming the
flag and the bad value, before anything is sent."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable

from crctl.limits import MAX_EVERY, MAX_TIMEOUT, MIN_EVERY


def between(low: int, high: int) -> Callable[[str], int]:
    """A whole number from ``low`` to ``high``."""

    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range: give {low} to {high}")
        return value

    return whole


def seconds(text: str) -> float:
    """A deadline: more than 0 seconds, at most MAX_TIMEOUT. (The wire's 0, "the coordinator's
    default", is what leaving the flag out sends.)"""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT):
        raise argparse.ArgumentTypeError(
            f"{text} is out of range: give more than 0 and at most {MAX_TIMEOUT:.0f} seconds "
            "(leave the flag out for the coordinator's default)"
        )
    return value


def key_value(item: str) -> tuple[str, str]:
    """One ``NAME=VALUE`` of a repeated flag; the value may itself hold "=" or ","."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, not {item!r}")
    return key, value


def host_map(text: str) -> dict[str, str]:
    """ "h1=h4,h2=h5" -> {"h1": "h4", "h2": "h5"}, refusing malformed or repeated entries."""
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise argparse.ArgumentTypeError(f"malformed host map entry {item!r}: expected OLD=NEW")
        if old in pairs:
            raise argparse.ArgumentTypeError(f"host map entry names {old} twice")
        pairs[old] = new
    return pairs


def add_env_option(parser: argparse.ArgumentParser, whose: str = "the ranks") -> None:
    """``--env NAME=VALUE`` (repeatable): added to the caller's environment for ``whose``."""
    parser.add_argument(
        "--env",
        action="append",
        type=key_value,
        default=[],
        metavar="NAME=VALUE",
        help=f"an environment variable for {whose}, besides yours (repeatable)",
    )


_DURATION = re.compile(
    r"(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?"
)
_UNIT_SECONDS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}


def duration(text: str) -> float:
    """An interval: ``90s``, ``2m``, ``1h30m``, ``1d``, or plain seconds (``90``, ``1.5``),
    from MIN_EVERY to MAX_EVERY seconds."""
    spelled = text.strip().lower()
    match = _DURATION.fullmatch(spelled)
    try:
        if spelled and match is not None and any(match.groups()):
            value = sum(float(n) * _UNIT_SECONDS[u] for u, n in match.groupdict().items() if n)
        else:
            value = float(spelled)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 90s, 2m, 1h30m or a number of seconds, not {text!r}"
        ) from None
    if not (math.isfinite(value) and MIN_EVERY <= value <= MAX_EVERY):
        raise argparse.ArgumentTypeError(
            f"{text} is out of range: give {MIN_EVERY:.0f} second to {MAX_EVERY / 86_400:.0f} days"
        )
    return value


def format_duration(seconds: float) -> str:
    """90 -> "1m30s", 5400 -> "1h30m", 2 -> "2s", 1.5 -> "1.5s": as ``duration`` reads it."""
    if seconds != int(seconds):
        return f"{seconds:g}s"
    rest, parts = int(seconds), []
    for unit, size in _UNIT_SECONDS.items():
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"
