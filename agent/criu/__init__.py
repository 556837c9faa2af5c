"""The one place that talks to CRIU: it runs ``criu swrk <fd>`` and speaks CRIU's RPC over a
``SOCK_SEQPACKET`` socketpair itself (``pycriu.criu`` cannot take NOTIFY messages), holding a
dump at ``post-dump`` and a restore at ``post-restore`` until the caller decides.

:func:`start_dump` / :func:`start_restore` return a handle as soon as CRIU has started; CRIU
goes on in the background (every other hook is acknowledged as it arrives) and stops at the
holding hook:

* ``post-dump``: images written, tasks frozen, their TCP connections locked.
  ``commit()`` lets CRIU finish (tasks killed, or left running with ``leave_running``);
  ``abort()`` makes CRIU roll back (network unlocked, tasks resumed).
* ``post-restore``: tasks created but not resumed, network still locked (unless SKIP).
  ``release()`` lets them run; ``abort()`` makes CRIU kill them, and we reap the root.

``held()`` raises :class:`~crctl.errors.CriuError` (with the ``Error`` lines of CRIU's log and
the log's path) if CRIU fails before the holding hook. Calling ``commit()`` / ``release()``
without ``held()`` means "do not hold": the hook is answered as soon as it comes, like a plain
``criu dump`` / ``criu restore``; :func:`dump` and :func:`restore` are exactly that. After
``abort()`` every later hook is refused, so an early abort stops CRIU at its next hook. A
handle is an async context manager: leaving the block without a decision aborts; if the agent
dies, CRIU sees its socket close, takes it as "no" and rolls back.

A restore with ``lazy_pages`` creates the tasks without their memory, which a ``criu
lazy-pages`` daemon (:func:`start_lazy_pages`) copies in while they run; ``pages_in()`` says when
all is in, or that the daemon failed (the tasks must then die). ``wait_at_pre_dump`` /
``wait_at_pre_restore`` make CRIU wait at its first hook, before it touches any task, until
``proceed()``: its start-up then happens ahead of the step that matters.

Layout: ``_specs`` (what to do), ``_swrk`` (the CRIU process and socket), ``_session`` (the
hook loop and the handles), ``_start`` (building requests), ``_lazy_pages`` (the post-copy
daemon), ``_lock`` (the network lock a dump leaves behind), ``_probe_cache`` (CRIU's kernel
probes kept where CRIU cannot keep them).
Only ``agent.images`` besides this package imports pycriu."""

from agent.criu._lazy_pages import (
    LAZY_PAGES_LOG,
    LazyPages,
    command_lines,
    kill_outlived,
    outlived,
    running_daemons,
)
from agent.criu._lock import nft_lock_table
from agent.criu._probe_cache import seed_probe_cache
from agent.criu._session import HOLD_DUMP, HOLD_RESTORE, HeldDump, HeldRestore
from agent.criu._specs import DumpResult, DumpSpec, NetworkLock, RestoreResult, RestoreSpec
from agent.criu._start import dump, restore, start_dump, start_lazy_pages, start_restore
from agent.criu._swrk import criu_binary, error_lines

__all__ = [
    "HOLD_DUMP",
    "HOLD_RESTORE",
    "LAZY_PAGES_LOG",
    "DumpResult",
    "DumpSpec",
    "HeldDump",
    "HeldRestore",
    "LazyPages",
    "NetworkLock",
    "RestoreResult",
    "RestoreSpec",
    "command_lines",
    "criu_binary",
    "dump",
    "error_lines",
    "kill_outlived",
    "nft_lock_table",
    "outlived",
    "restore",
    "running_daemons",
    "seed_probe_cache",
    "start_dump",
    "start_lazy_pages",
    "start_restore",
]
