"""Finding restart plugins and running their hooks with timeouts, fail-closed.

Order: the built-in plugins (the TCP endpoint rewriter first), then those installed under the
``crctl.restart_plugins`` entry-point group, then those named for this restart. A named plugin
(``module:Class``) is loaded only from a file the admin put in the agent's ``plugin_dir``
(``module.py`` or ``module/__init__.py``), never from the import path: plugins run as root."""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
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


def plugin_modules(plugin_dir: Path) -> list[str]:
    """The modules of ``plugin_dir`` that restarts may name (an agent lists them)."""
    try:
        entries = sorted(plugin_dir.iterdir())
    except OSError:
        return []
    found = []
    for entry in entries:
        if entry.suffix == ".py" and entry.stem.isidentifier():
            found.append(entry.stem)
        elif entry.is_dir() and entry.name.isidentifier() and (entry / "__init__.py").is_file():
            found.append(entry.name)
    return found


def _load_named(spec: str, plugin_dir: Path) -> type[RestartPlugin]:
    """``module:Class`` from plugin_dir, imported under a name of its own."""
    module_name, sep, class_name = spec.partition(":")
    if not sep or not module_name or not class_name:
        raise PluginError(f"bad plugin {spec!r}: expected module:Class")
    if module_name not in plugin_modules(plugin_dir):
        raise PluginError(
            f"plugin {spec} refused: {module_name} is not a module in {plugin_dir}, where the "
            "admin installs the plugins restarts may name"
        )
    package = plugin_dir / module_name
    path = package / "__init__.py" if package.is_dir() else plugin_dir / f"{module_name}.py"
    qualified = f"crctl_plugin_dir.{module_name}"
    module = sys.modules.get(qualified)
    if module is None:
        found = importlib.util.spec_from_file_location(
            qualified, path, submodule_search_locations=[str(package)] if package.is_dir() else None
        )
        if found is None or found.loader is None:
            raise PluginError(f"cannot load plugin {spec} from {path}")
        module = importlib.util.module_from_spec(found)
        sys.modules[qualified] = module
        try:
            found.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[qualified]
            raise PluginError(f"cannot load plugin {spec} from {path}: {exc!r}") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, RestartPlugin)):
        raise PluginError(f"plugin {spec} is not a crctl.plugins.RestartPlugin")
    return cls


def plugin_name(plugin: RestartPlugin) -> str:
    return plugin.name or type(plugin).__name__


@functools.cache
def _installed() -> tuple[str, ...]:
    """Plugins installed under the entry-point group (scanning the installed packages' metadata
    takes tens of milliseconds: once per agent process, not once per restart)."""
    return tuple(entry.value for entry in entry_points(group=ENTRY_POINT_GROUP))


def load_plugins(named: Sequence[str], plugin_dir: Path) -> list[RestartPlugin]:
    classes: list[type[RestartPlugin]] = []
    for cls in [
        *(_load_class(spec) for spec in (*BUILTIN, *_installed())),
        *(_load_named(spec, plugin_dir) for spec in named),
    ]:
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
