"""A rank's working copy of its images: what a restore may rewrite, leaving the checkpoint as
it was."""

from __future__ import annotations

import errno as errno_codes
import os
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.images._format import FILES_IMG, INVENTORY_IMG, ImageError, listing, load, replace

log = structlog.get_logger()

# CRIU's network lock methods as inventory.img records them (its internal enum, not the RPC's).
_LOCK_SKIP = 2

# Unmodified image files at least this big are hard-linked into a working copy (pages-*.img
# can be GiBs; a copy runs at about 0.3 GB/s here). Smaller ones are copied: it costs nothing
# and keeps the copy independent of the source wherever that is cheap.
LINK_MIN_BYTES = 1 << 20


@dataclass(frozen=True)
class CopyReport:
    source: Path
    target: Path
    linked: tuple[str, ...]  # files hard-linked from the source
    copied: tuple[str, ...]  # files copied (files.img is always among them)
    seconds: float

    @property
    def copied_bytes(self) -> int:
        return sum((self.target / name).stat().st_size for name in self.copied)


def make_working_copy(source: Path, target: Path, *, link_unmodified: bool = True) -> CopyReport:
    """Make ``target``, a copy of the images in ``source`` that rewriters may change.

    ``files.img`` (which holds the sockets' addresses) is always a fresh copy; other files are
    copied, or hard-linked when big and ``link_unmodified``. Whoever changes a file of the copy
    must therefore write a new file and rename it into place, never write into it (nor
    restore with CRIU's auto-dedup): :mod:`agent.images` does so. ``source`` is never
    modified, and its ``files.img`` must load.

    ``target`` must not exist; it appears complete or not at all."""
    started = time.monotonic()
    files = listing(source)
    load(source / FILES_IMG, "FILES")
    if target.exists() or target.is_symlink():
        raise ImageError(f"target {target} already exists", path=target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    except OSError as exc:
        raise ImageError(f"cannot make {target}: {exc}", path=target, errno=exc.errno) from exc
    linked: list[str] = []
    copied: list[str] = []
    try:
        os.chmod(partial, stat.S_IMODE(source.stat().st_mode))
        for path in files:
            dest = partial / path.name
            if (
                link_unmodified
                and path.name != FILES_IMG
                and path.stat().st_size >= LINK_MIN_BYTES
                and _link(path, dest)
            ):
                linked.append(path.name)
            else:
                shutil.copyfile(path, dest)
                shutil.copymode(path, dest)
                copied.append(path.name)
        os.rename(partial, target)
    except BaseException as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(exc, OSError):
            raise ImageError(
                f"cannot make {target} from {source}: {exc}", path=target, errno=exc.errno
            ) from exc
        raise
    report = CopyReport(
        source=source,
        target=target,
        linked=tuple(linked),
        copied=tuple(copied),
        seconds=time.monotonic() - started,
    )
    log.info(
        "images_working_copy_made",
        source=str(source),
        target=str(target),
        linked=len(linked),
        copied=len(copied),
        seconds=round(report.seconds, 3),
    )
    return report


def _link(source: Path, dest: Path) -> bool:
    try:
        os.link(source, dest)
    except OSError as exc:
        if exc.errno not in (errno_codes.EXDEV, errno_codes.EPERM, errno_codes.EMLINK):
            raise
        log.info("images_link_refused", path=str(source), reason=exc.strerror)
        return False
    return True


def skip_criu_network_lock(images_dir: Path) -> bool:
    """Make CRIU restore the working copy ``images_dir`` without a network lock of its own: a
    restore takes the lock method from the images (the dump's), whatever it is asked for, and
    the caller locks the connections itself (crctl's restore lock, agent.netlock). Saves CRIU
    an nftables table per restore, and its removal (milliseconds of kernel time) just before
    the ranks resume. False if the images already said so."""
    path = images_dir / INVENTORY_IMG
    entries = load(path, "INVENTORY")
    if len(entries) != 1:
        raise ImageError(f"{INVENTORY_IMG} holds {len(entries)} entries, not 1", path=path)
    if entries[0].HasField("network_lock_method") and entries[0].network_lock_method == _LOCK_SKIP:
        return False
    entries[0].network_lock_method = _LOCK_SKIP
    replace(path, "INVENTORY", entries)
    return True
