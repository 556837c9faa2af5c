"""Printing for the CLI: aligned tables for people, JSON for scripts."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from google.protobuf.message import Message


class AddCommand(Protocol):
    """Adds a subcommand: (name, handler, help, with a --json flag) -> its parser."""

    def __call__(
        self, name: str, func: Callable[..., int], help_text: str, json_flag: bool = False
    ) -> argparse.ArgumentParser: ...


def to_dict(message: Message) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict  # only --json output needs it

    return MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    print("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
