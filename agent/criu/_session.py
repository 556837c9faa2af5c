"""One dump or restore in progress: the RPC loop that answers CRIU's hooks, holds at one of
them until the caller decides, and turns CRIU's failures into :class:`CriuError`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import structlog
from pycriu import rpc_pb2 as rpc

from agent.criu._lazy_pages import LazyPages
from agent.criu._lock import nft_lock_table
from agent.criu._specs import DumpResult, DumpSpec, RestoreResult, RestoreSpec
from agent.criu._swrk import Swrk, error_lines, harmless
from agent.reaper import PinnedProcess
from crctl.errors import CriuError

log = structlog.get_logger()

HOLD_DUMP = "post-dump"
GATE_DUMP = "pre-dump"
HOLD_RESTORE = "post-restore"
GATE_RESTORE = "pre-restore"
_ABORT_KILL_AFTER = 30.0
_ROOT_EXIT_WAIT = 5.0


class HeldSession:
    """Drives one swrk session: acknowledges hooks, holds at one, keeps the final answer."""

    kind: Literal["dump", "restore"]
    hold: str
    # A hook before the holding one where CRIU waits for :meth:`_open_gate` (None: no gate).
    gate: str | None = None

    def __init__(self, swrk: Swrk, log_path: Path, subject: str) -> None:
        self._swrk = swrk
        self.log_path = log_path
        self._subject = subject
        self._started = time.monotonic()
        loop = asyncio.get_running_loop()
        self._reached: asyncio.Future[int | None] = loop.create_future()
        self._decision: asyncio.Future[bool] = loop.create_future()
        self._at_gate: asyncio.Future[None] = loop.create_future()
        self._gate_open: asyncio.Future[bool] = loop.create_future()
        self._first = asyncio.Event()
        self._final: Any | None = None
        self._failure: BaseException | None = None
        self._task = asyncio.create_task(self._drive())

    @property
    def criu_pid(self) -> int:
        return self._swrk.proc.pid

    @property
    def decided(self) -> bool:
        return self._decision.done()

    @property
    def finished(self) -> bool:
        """CRIU has given its final answer (or died)."""
        return self._task.done()

    async def _drive(self) -> None:
        try:
            while True:
                resp = await self._swrk.recv()
                self._first.set()
                if resp is None:
                    break
                if resp.type != rpc.NOTIFY:
                    self._final = resp
                    break
                script = resp.notify.script
                if resp.notify.HasField("pid"):
                    self._saw_pid(resp.notify.pid)
                if script == self.gate and not self._at_gate.done():
                    self._at_gate.set_result(None)
                    ok = await self._gate_open
                    log.debug("criu_gate_passed", kind=self.kind, script=script, reply=ok)
                elif script == self.hold:
                    log.debug(
                        "criu_held",
                        kind=self.kind,
                        subject=self._subject,
                        seconds=round(time.monotonic() - self._started, 4),
                    )
                    if not self._reached.done():
                        self._reached.set_result(
                            resp.notify.pid if resp.notify.HasField("pid") else None
                        )
                    ok = await self._decision
                else:
                    # Before a decision every hook is acknowledged; after an abort, refused.
                    ok = self._decision.result() if self._decision.done() else True
                    log.debug("criu_notify", kind=self.kind, script=script, reply=ok)
                await self._swrk.send(rpc.criu_req(type=rpc.NOTIFY, notify_success=ok))
        except Exception as exc:  # a broken socket or a garbled message: CRIU is beyond help
            self._failure = exc
            self._swrk.kill()
        finally:
            self._first.set()
            code = await self._swrk.close()
            for reached in (self._at_gate, self._reached):
                if not reached.done():
                    reached.set_exception(self._error(code))
                    reached.exception()  # may never be awaited: no "never retrieved" warning
            await self._finished()
            log.debug(
                "criu_finished",
                kind=self.kind,
                subject=self._subject,
                exit_code=code,
                success=self._succeeded(),
                seconds=round(time.monotonic() - self._started, 4),
            )

    def _saw_pid(self, pid: int) -> None:
        """A hook named a task of ours (restore: the root)."""

    async def _finished(self) -> None:
        """CRIU is gone; clean up after it."""

    def _succeeded(self) -> bool:
        return self._final is not None and bool(self._final.success)

    def _error(self, exit_code: int | None = None) -> CriuError:
        """CRIU's reason as one line: the ``Error`` lines of its log (or its stderr when it
        failed before opening the log), its errno, and the log's path."""
        reason: list[str] = []
        errno_: int | None = None
        lines = error_lines(self.log_path)
        if self._final is None:
            reason.append(f"criu exited ({exit_code}) without an answer")
        else:
            if self._final.HasField("cr_errno") and self._final.cr_errno:
                errno_ = self._final.cr_errno
            # cr_errmsg is CRIU's first error message, here usually the harmless rlimit one.
            errmsg = self._final.cr_errmsg.strip() if self._final.HasField("cr_errmsg") else ""
            if errmsg and not harmless(errmsg) and not any(errmsg in line for line in lines):
                reason.append(errmsg)
        if self._failure is not None:
            reason.append(f"RPC failed: {self._failure!r}")
        reason.extend(lines)
        if not lines and self._swrk.stderr:
            reason.append("stderr: " + " / ".join(self._swrk.stderr))
        if not lines and errno_:
            reason.append(os.strerror(errno_))
        message = f"criu {self.kind} of {self._subject} failed: " + "; ".join(reason)
        return CriuError(f"{message} (log {self.log_path})", phase=self.kind, errno=errno_)

    async def first_event(self) -> None:
        """CRIU has answered once (a hook or its final reply): it has opened its dirs and log."""
        await self._first.wait()

    async def _held(self) -> int | None:
        return await asyncio.shield(self._reached)

    async def ready(self) -> None:
        """Return once CRIU waits at its gate (HeldDump: pre-dump, HeldRestore: pre-restore),
        having done all it does before touching any task: its start, kernel probing, reading
        the images; CriuError if it failed before."""
        await asyncio.shield(self._at_gate)

    def proceed(self) -> None:
        """Let CRIU go on from its gate: a dump seizes (and, with ``freeze_cgroup``, freezes)
        the tasks and dumps them; a restore creates the tasks."""
        self._open_gate(True)

    def _open_gate(self, ok: bool) -> None:
        if not self._gate_open.done():
            self._gate_open.set_result(ok)

    async def _decide(self, ok: bool) -> None:
        self._open_gate(ok)  # deciding without passing the gate means "do not stop there"
        if not self._decision.done():
            self._decision.set_result(ok)
        await asyncio.shield(self._task)

    async def _abort(self, kill_after: float | None) -> None:
        self._open_gate(False)
        if not self._decision.done():
            self._decision.set_result(False)
        elif self._decision.result():
            log.warning("criu_abort_after_commit", kind=self.kind, subject=self._subject)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), kill_after)
        except TimeoutError:
            log.error(
                "criu_abort_timeout",
                kind=self.kind,
                subject=self._subject,
                criu_pid=self.criu_pid,
                seconds=kill_after,
            )
            self._swrk.kill()
            await asyncio.shield(self._task)
        log.info(
            "criu_aborted",
            kind=self.kind,
            subject=self._subject,
            reached_hold=self._reached.exception() is None,
        )

    def _require_commit(self, what: str) -> None:
        if not self._decision.result():
            raise CriuError(
                f"criu {self.kind} of {self._subject} was aborted; cannot {what}", phase=self.kind
            )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._decision.done():
            await self._abort(_ABORT_KILL_AFTER)


class HeldDump(HeldSession):
    """A dump that holds at ``post-dump`` (images written, tasks frozen, TCP locked); with
    ``spec.wait_at_pre_dump`` it first waits at ``pre-dump`` (CRIU initialised, tasks untouched)
    until :meth:`proceed`."""

    kind = "dump"
    hold = HOLD_DUMP

    def __init__(self, swrk: Swrk, spec: DumpSpec, log_path: Path) -> None:
        super().__init__(swrk, log_path, f"pid {spec.pid}")
        self.spec = spec
        if spec.wait_at_pre_dump:
            self.gate = GATE_DUMP

    async def held(self) -> None:
        """Return once CRIU holds at post-dump; CriuError if it failed before."""
        await self._held()

    async def commit(self) -> DumpResult:
        """Let CRIU finish: tasks killed (or left running with ``leave_running``)."""
        await self._decide(True)
        self._require_commit("commit")
        if not self._succeeded():
            raise self._error()
        return DumpResult(
            images_dir=self.spec.images_dir,
            log_path=self.log_path,
            left_running=self.spec.leave_running,
            seconds=time.monotonic() - self._started,
            lock_table=None if self.spec.leave_running else nft_lock_table(self.spec.images_dir),
        )

    async def abort(self, *, kill_after: float | None = _ABORT_KILL_AFTER) -> None:
        """Make CRIU roll back: network unlocked, tasks resumed. Safe in any state (CRIU done,
        dead, or not yet at post-dump: it is refused at its next hook). CRIU is killed if it has
        not finished ``kill_after`` seconds later."""
        await self._abort(kill_after)


class HeldRestore(HeldSession):
    """A restore that holds at ``post-restore`` (tree created, not resumed, network locked);
    with ``spec.wait_at_pre_restore`` it first waits at ``pre-restore`` (images read, no task
    created yet) until :meth:`proceed`."""

    kind = "restore"
    hold = HOLD_RESTORE

    def __init__(
        self, swrk: Swrk, spec: RestoreSpec, log_path: Path, pages: LazyPages | None = None
    ) -> None:
        super().__init__(swrk, log_path, str(spec.images_dir))
        self.spec = spec
        self._root: PinnedProcess | None = None
        self.pages = pages
        if spec.wait_at_pre_restore:
            self.gate = GATE_RESTORE

    def _saw_pid(self, pid: int) -> None:
        # The root is named at setup-namespaces and post-restore. Pin it at once (it exists and
        # CRIU holds it), so that it can be killed and reaped without ever hitting a recycled
        # PID: with rst_sibling it is our child, and CRIU cannot reap it if the restore fails.
        if self._root is None:
            with contextlib.suppress(ProcessLookupError):
                self._root = PinnedProcess(pid)

    async def _finished(self) -> None:
        if self.pages is not None and not self._succeeded():
            self.pages.kill()  # it may wait for a restore that will never call
        root, self._root = self._root, None
        if root is None:
            return
        if self._succeeded():
            root.close()
            return
        # Failed or aborted: CRIU has SIGKILLed the namespace's init; make sure, and reap it.
        root.send_signal(signal.SIGKILL)
        try:
            code = await asyncio.wait_for(root.wait(), _ROOT_EXIT_WAIT)
        except TimeoutError:
            log.error("restored_root_did_not_die", pid=root.pid, seconds=_ROOT_EXIT_WAIT)
            root.close()
            return
        log.info("restored_root_reaped", pid=root.pid, returncode=code)

    async def held(self) -> int:
        """Return the restored root's PID once CRIU holds at post-restore; CriuError if it
        failed before."""
        pid = await self._held()
        if pid is None:
            raise CriuError(
                f"criu restore of {self._subject} did not report the root's pid", phase=self.kind
            )
        return pid

    async def release(self) -> RestoreResult:
        """Let the restored tasks run; wait for CRIU's final answer."""
        await self._decide(True)
        self._require_commit("release")
        if not self._succeeded():
            raise self._error()
        assert self._final is not None
        return RestoreResult(
            pid=int(self._final.restore.pid),
            log_path=self.log_path,
            seconds=time.monotonic() - self._started,
        )

    async def pages_in(self) -> None:
        """Return once the restored tasks have all their memory (at once unless the restore
        was lazy); CriuError if the lazy-pages daemon failed: the tasks must not go on."""
        if self.pages is not None:
            await self.pages.filled()

    async def abort(self, *, kill_after: float | None = _ABORT_KILL_AFTER) -> None:
        """Make CRIU give up: it SIGKILLs the restored tree (the init of its PID namespace);
        we then make sure the root is dead and reap it. Safe in any state."""
        await self._abort(kill_after)
