"""Restart plugins used by the end-to-end tests: this folder is the testbed agents'
plugin_dir (the admin's), so a restart may name ``restart_plugins:<Class>``."""

from __future__ import annotations

import json
from pathlib import Path

from crctl.plugins import PluginError, RestartContext, RestartPlugin


class RecordingPlugin(RestartPlugin):
    """Appends one JSON line per hook call to the file named by the option ``record_to``."""

    name = "recording"

    def _record(self, hook: str, context: RestartContext) -> None:
        line = {
            "hook": hook,
            "job": context.job,
            "checkpoint": context.checkpoint,
            "rank": context.rank,
            "old_host": context.old_host,
            "new_host": context.new_host,
            "address_map": dict(context.address_map),
            "moves": {k: [v.new_host, list(v.new_addresses)] for k, v in context.moves.items()},
            "images_dir_exists": context.images_dir.is_dir(),
            "pid": context.pid,
        }
        with Path(context.options["record_to"]).open("a") as out:
            out.write(json.dumps(line) + "\n")

    async def before_restore(self, context: RestartContext) -> None:
        self._record("before_restore", context)

    async def after_restore(self, context: RestartContext) -> None:
        self._record("after_restore", context)

    async def before_resume(self, context: RestartContext) -> None:
        self._record("before_resume", context)


class FailingPlugin(RestartPlugin):
    """Fails every restart while the ranks are held."""

    name = "failing"

    async def after_restore(self, context: RestartContext) -> None:
        raise PluginError(f"refusing to resume rank {context.rank}: test says no")
