"""Starting a dump or a restore: the request CRIU gets for a spec."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog
from pycriu import rpc_pb2 as rpc

from agent.criu._lazy_pages import LazyPages
from agent.criu._session import HeldDump, HeldRestore, HeldSession
from agent.criu._specs import DumpResult, DumpSpec, RestoreResult, RestoreSpec
from agent.criu._swrk import Swrk, criu_binary

log = structlog.get_logger()

_SessionT = TypeVar("_SessionT", bound=HeldSession)


def _open_dir(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


async def _start(
    *,
    criu: str,
    netns: Path | None,
    req_type: int,
    images_dir: Path,
    work_dir: Path,
    log_file: str,
    log_level: int,
    pass_fds: tuple[int, ...],
    fill: Callable[[Any], None],
    make: Callable[[Swrk, Path], _SessionT],
) -> _SessionT:
    """Spawn swrk and send the request. CRIU opens the images and work dirs as
    /proc/<our pid>/fd/<fd> (an RPC ``images_dir`` path fails: CRIU readlinks it), so both fds
    stay open here until CRIU's first message, by which time it has opened them."""
    images_fd = _open_dir(images_dir)
    try:
        work_fd = _open_dir(work_dir)
    except BaseException:
        os.close(images_fd)
        raise
    try:
        opts = rpc.criu_opts(images_dir_fd=images_fd)
        opts.work_dir_fd = work_fd
        opts.log_file = log_file
        opts.log_level = log_level
        opts.notify_scripts = True
        fill(opts)
        swrk = await Swrk.spawn(criu, netns, pass_fds)
        session = make(swrk, work_dir / log_file)
        with contextlib.suppress(OSError):  # CRIU died at once: the session reports it
            await swrk.send(rpc.criu_req(type=req_type, opts=opts))
        await session.first_event()
    finally:
        os.close(images_fd)
        os.close(work_fd)
    return session


async def start_dump(spec: DumpSpec) -> HeldDump:
    """Start CRIU dumping ``spec.pid``'s tree; it will hold at ``post-dump``. Returns once CRIU
    has started (its first hook); failures surface from ``held()`` / ``commit()``."""
    if spec.pid <= 0:
        raise ValueError("DumpSpec.pid must be a real PID (CRIU would dump its caller)")
    criu = criu_binary(spec.criu_path)
    spec.images_dir.mkdir(parents=True, exist_ok=True)
    work_dir = spec.work_dir or spec.images_dir
    work_dir.mkdir(parents=True, exist_ok=True)

    def fill(opts: Any) -> None:
        opts.pid = spec.pid
        opts.leave_running = spec.leave_running
        opts.tcp_established = spec.tcp_established
        opts.file_locks = spec.file_locks
        if spec.freeze_cgroup is not None:
            opts.freeze_cgroup = str(spec.freeze_cgroup)
        opts.network_lock = spec.network_lock.value
        if spec.timeout is not None:
            opts.timeout = spec.timeout
        opts.external.extend(spec.external)

    session = await _start(
        criu=criu,
        netns=spec.netns,
        req_type=rpc.DUMP,
        images_dir=spec.images_dir,
        work_dir=work_dir,
        log_file=spec.log_file,
        log_level=spec.log_level,
        pass_fds=(),
        fill=fill,
        make=lambda swrk, log_path: HeldDump(swrk, spec, log_path),
    )
    log.info(
        "criu_dump_started",
        pid=spec.pid,
        images_dir=str(spec.images_dir),
        criu_pid=session.criu_pid,
        leave_running=spec.leave_running,
    )
    return session


async def start_lazy_pages(spec: RestoreSpec) -> LazyPages:
    """Start the lazy-pages daemon a restore of ``spec`` (with ``lazy_pages``) will use; it
    listens until the restore comes (ahead of time: its start is then off the restore's path)."""
    work_dir = spec.work_dir or spec.images_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    return await LazyPages.start(
        criu=criu_binary(spec.criu_path),
        images_dir=spec.images_dir,
        work_dir=work_dir,
        log_level=spec.log_level,
        netns=spec.netns,
    )


async def start_restore(spec: RestoreSpec, *, pages: LazyPages | None = None) -> HeldRestore:
    """Start CRIU restoring ``spec.images_dir``; it will hold at ``post-restore``. The root is
    created as our child (``rst_sibling``), so it never stays a child of CRIU. A lazy restore
    uses ``pages`` (from :func:`start_lazy_pages`) or starts its daemon first."""
    criu = criu_binary(spec.criu_path)
    work_dir = spec.work_dir or spec.images_dir
    work_dir.mkdir(parents=True, exist_ok=True)

    def fill(opts: Any) -> None:
        opts.tcp_established = spec.tcp_established
        opts.file_locks = spec.file_locks
        opts.rst_sibling = True
        opts.lazy_pages = spec.lazy_pages
        for key, fd in spec.inherit_fds.items():
            opts.inherit_fd.add(key=key, fd=fd)
        opts.external.extend(spec.external)

    if spec.lazy_pages and pages is None:
        pages = await start_lazy_pages(spec)
    elif not spec.lazy_pages and pages is not None:
        raise ValueError("a lazy-pages daemon was given for a restore that is not lazy")
    try:
        session = await _start(
            criu=criu,
            netns=spec.netns,
            req_type=rpc.RESTORE,
            images_dir=spec.images_dir,
            work_dir=work_dir,
            log_file=spec.log_file,
            log_level=spec.log_level,
            pass_fds=tuple(spec.inherit_fds.values()),
            fill=fill,
            make=lambda swrk, log_path: HeldRestore(swrk, spec, log_path, pages),
        )
    except BaseException:
        if pages is not None:
            pages.kill()
        raise
    log.info(
        "criu_restore_started",
        images_dir=str(spec.images_dir),
        criu_pid=session.criu_pid,
        inherit=sorted(spec.inherit_fds),
        lazy_pages_pid=pages.pid if pages is not None else None,
    )
    return session


async def dump(spec: DumpSpec) -> DumpResult:
    """A plain dump with no hold (what ``criu dump`` does)."""
    session = await start_dump(spec)
    return await session.commit()


async def restore(spec: RestoreSpec) -> RestoreResult:
    """A plain restore with no hold (what ``criu restore -d`` does)."""
    session = await start_restore(spec)
    return await session.release()
