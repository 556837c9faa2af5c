"""Restart plugins: the one contract for code that rewires a job when it restarts elsewhere.

To implement: inherit :class:`RestartPlugin`, override the hooks you need (each is an async
no-op by default), and register the class, either

* as an entry point in the ``crctl.restart_plugins`` group of your package::

      [project.entry-points."crctl.restart_plugins"]
      peers = "mypkg.crctl_plugins:PeersFile"

  (installed plugins are active for every restart), or
* per restart: ``crctl restart JOB --plugin peers_file:PeersFile``, where ``peers_file.py``
  (or a package ``peers_file/``) is in the agents' ``plugin_dir`` (``/etc/crctl/plugins``).
  Plugins run as root, so only what the admin installed can be named: any other module is
  refused by the coordinator before an agent imports anything, and by the agent itself.

Plugins run in the agent of each target host, once per rank restored there, in this order:

1. ``before_restore``: the rank's working copy of the images is ready (``context.images_dir``,
   writable; the checkpoint itself is never touched) and the host is locked. Rewrite images or
   files the rank will read.
2. ``after_restore``: the rank exists (``context.pid``: its command's process) but is held
   frozen by CRIU at ``post-restore``; its connections are still locked.
3. ``before_resume``: every rank of the job is held and the locks are lifted; the rank resumes
   right after this hook.

Each hook has ``timeout`` seconds. A hook that raises or times out fails the restart
(fail-closed): every restored rank is killed, the locks are removed, and the error names the
plugin, the hook, the host and the rank. Raise :class:`PluginError` for a message of your own.

Options given with ``--plugin-option KEY=VALUE`` reach every plugin as ``context.options``.
The TCP endpoint rewriter (``agent.plugins.tcp_endpoints``) is itself such a plugin, on by
default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from crctl.errors import CrctlError

# An agent lists each module of its plugin_dir among its capabilities as "plugin:<module>".
PLUGIN_CAPABILITY = "plugin:"
# An agent that rewrites a rank's endpoints one by one (RestoreRank's local and peer maps):
# what a restart spreading the ranks of one old host over several new ones needs of its hosts.
PER_RANK_ENDPOINTS = "per-rank-endpoints"
ENTRY_POINT_GROUP = "crctl.restart_plugins"


class PluginError(CrctlError):
    """A plugin's hook failed; its message is shown to the user as is."""


@dataclass(frozen=True, kw_only=True)
class HostMove:
    """Where one of the job's old hosts went."""

    old_host: str
    new_host: str
    old_addresses: tuple[str, ...]
    new_addresses: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class HostSplit:
    """One of the job's old hosts whose ranks went to several new hosts: its name and its
    addresses have no single new one (they are in neither ``moves`` nor ``address_map``)."""

    old_host: str
    new_hosts: tuple[str, ...]
    old_addresses: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class RestartContext:
    job: str
    checkpoint: str
    rank: int
    old_host: str
    new_host: str
    # Every old host of the job whose ranks went to one new host -> where it went (hosts that
    # stay map to themselves).
    moves: Mapping[str, HostMove]
    # Old address -> new address, for every address of every moved host of ``moves``.
    address_map: Mapping[str, str]
    # The rank's working copy of its images on the new host (writable).
    images_dir: Path
    options: Mapping[str, str] = field(default_factory=dict)
    # The restored rank's PID (in the agent's namespace), from after_restore on.
    pid: int | None = None
    # The job's owner: plugins run as root, so files a caller names are touched with these
    # rights only (agent.fs_owner.as_owner), never root's.
    owner_uid: int = 0
    owner_gid: int = 0
    owner_groups: tuple[int, ...] = ()
    # The old hosts whose ranks went to several new hosts (see HostSplit), and for this rank
    # the rewrite of its endpoints that their addresses need: its own old host's addresses ->
    # its new host's when that host was split (local ends), and its connections to ranks of a
    # split host ("local:port>peer:port", dump-time addresses) -> the new address of the peer.
    splits: Mapping[str, HostSplit] = field(default_factory=dict)
    local_address_map: Mapping[str, str] = field(default_factory=dict)
    peer_address_map: Mapping[str, str] = field(default_factory=dict)


class RestartPlugin:
    """Base class of restart plugins: override the hooks you need."""

    #: Shown in logs and errors; defaults to the class name.
    name: ClassVar[str] = ""
    #: Seconds each hook may take.
    timeout: ClassVar[float] = 30.0

    async def before_restore(self, context: RestartContext) -> None:
        """The working images exist and the host is locked; nothing is restored yet."""

    async def after_restore(self, context: RestartContext) -> None:
        """The rank is restored and held frozen (``context.pid`` is set)."""

    async def before_resume(self, context: RestartContext) -> None:
        """All ranks are held and the locks are lifted; the rank resumes after this."""
