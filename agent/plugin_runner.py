"""Finding restart plugins and running their hooks with timeouts, fail-closed.

Order: the built-in plugins (the TCP endpoint rewriter first), then those installed under the
``crctl.restart_plugins`` entry-point group, then those named for this restart."""

from __future__ import annotations

import asyncio
import functools
import importlib
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Literal

import structlog

from crctl.plugins import ENTRY_POINT_GROUP, PluginError, RestartContext, RestartPlugin

log = structlog.get_logger()

BUILTIN = (
    "agent.plugins.tcp_endpoints:TcpEndpoints",
    "agent.plugins.host_files:HostFiles",
)
Hook = Literal["before_restore", "after_restore", "before_resume"]


def _load_class(spec: str) -> type[RestartPlugin]:
    module_name, sep, class_name = spec.partition(":")
    if not sep or not module_name or not class_name:
        raise PluginError(f"bad plugin {spec!r}: expected module:Class")
    try:
        found = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"cannot load plugin {spec}: {exc}") from None
    if not (isinstance(found, type) and issubclass(found, RestartPlugin)):
        raise PluginError(f"plugin {spec} is not a crctl.plugins.RestartPlugin")
    return found


def plugin_name(plugin: RestartPlugin) -> str:
    return plugin.name or type(plugin).__name__


@functools.cache
def _installed() -> tuple[str, ...]:
    """Plugins installed under the entry-point group (scanning the installed packages' metadata
    takes tens of milliseconds: once per agent process, not once per restart)."""
    return tuple(entry.value for entry in entry_points(group=ENTRY_POINT_GROUP))


def load_plugins(extra: Sequence[str]) -> list[RestartPlugin]:
    specs = [*BUILTIN, *_installed(), *extra]
    classes: list[type[RestartPlugin]] = []
    for spec in specs:
        cls = _load_class(spec)
        if cls not in classes:
            classes.append(cls)
    return [cls() for cls in classes]


async def run_hook(plugins: Sequence[RestartPlugin], hook: Hook, context: RestartContext) -> None:
    """Run one hook of every plugin, in order; the first failure stops the restart."""
    for plugin in plugins:
        name = plugin_name(plugin)
        try:
            await asyncio.wait_for(getattr(plugin, hook)(context), plugin.timeout)
        except TimeoutError:
            raise PluginError(
                f"plugin {name} did not finish {hook} for rank {context.rank} within "
                f"{plugin.timeout:.0f}s",
                job=context.job,
                host=context.new_host,
                phase=hook,
            ) from None
        except Exception as exc:
            message = exc.message if isinstance(exc, PluginError) else repr(exc)
            raise PluginError(
                f"plugin {name} failed in {hook} for rank {context.rank}: {message}",
                job=context.job,
                host=context.new_host,
                phase=hook,
            ) from None
        log.debug("plugin_hook_done", plugin=name, hook=hook, rank=context.rank)
