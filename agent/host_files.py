"""Files of a host that other hosts do not have, carried with a checkpoint: what the ranks
hold open, map or work in under the host's own folders (/tmp, /dev/shm, the agent's work
directory, where a root rank's own folder is). On a real cluster each node has its own; CRIU
reopens such files by path at restore and fails where they are missing.

At a dump, while the ranks stand frozen (so the files are as the images record them), every
such file, FIFO and directory the images name goes into ``host-files.tar`` beside the rank's
images (in the manifest like any image, so it is verified and fetched with them). At a
restore, each one that is missing on the restoring host is recreated from it, with the
recorded owner, mode and times; one that exists is left as it is (the same host, or a
shared folder: CRIU then checks it as always)."""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import structlog

from agent.images._format import load

log = structlog.get_logger()

ARCHIVE = "host-files.tar"
FILES_IMG = "files.img"


def private_roots(work_dir: Path, configured: str = "/tmp,/dev/shm") -> tuple[Path, ...]:
    """The folders whose contents are this host's own: those configured (host_private_paths)
    and the agent's work dir."""
    return (*(Path(p.strip()) for p in configured.split(",") if p.strip()), work_dir)


def _mount_points() -> list[Path]:
    try:
        with open("/proc/self/mountinfo") as mountinfo:
            return [Path(line.split()[4]) for line in mountinfo]
    except OSError:
        return [Path("/")]


def _mount_of(path: Path, mounts: Sequence[Path]) -> Path:
    """The mount point ``path`` lives on (the longest that contains it)."""
    return max((m for m in mounts if path.is_relative_to(m)), key=lambda m: len(m.parts))


def _under(path: Path, roots: Sequence[Path], mounts: Sequence[Path]) -> bool:
    """Under a private root and on that root's own mount: a folder mounted inside it from
    elsewhere (crctl's checkout kept shared inside a host's own /tmp) is not the host's."""
    return any(
        path != root
        and path.is_relative_to(root)
        and _mount_of(path, mounts) == _mount_of(root, mounts)
        for root in roots
    )


def named_paths(images_dir: Path) -> list[Path]:
    """Every path the images name through CRIU's regular-file entries (files, directories
    such as a task's cwd, FIFOs), in order, once each. Ghosts (deleted while open, carried
    by CRIU itself) are among them; pack passes over them, as they no longer exist."""
    entries = load(images_dir / FILES_IMG, "FILES")
    paths = []
    for entry in entries:
        if entry.HasField("reg"):
            paths.append(Path(entry.reg.name))
    return list(dict.fromkeys(paths))


def pack(images_dir: Path, roots: Sequence[Path]) -> list[str]:
    """Write ``host-files.tar`` into ``images_dir`` with the existing paths under ``roots`` the
    images name (and their parent folders below the root, so they come back as they were);
    nothing is written when there are none. Returns the paths packed."""
    chosen: list[Path] = []
    mounts = _mount_points()
    for path in named_paths(images_dir):
        if not path.is_absolute() or not _under(path, roots, mounts) or not _plain(path):
            continue
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            continue  # deleted since (a ghost CRIU keeps in its images)
        if stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISFIFO(mode):
            chosen.append(path)
    if not chosen:
        return []
    members = _with_parents(chosen, roots)
    with tarfile.open(images_dir / ARCHIVE, "w") as archive:
        for path in members:
            archive.add(str(path), arcname=str(path).lstrip("/"), recursive=False)
    return [str(p) for p in members]


def _plain(path: Path) -> bool:
    """No symbolic link on the way to ``path`` (its parents are what they say): a rank could
    otherwise have root read, or write, a file elsewhere through one."""
    try:
        return path.parent.resolve(strict=True) == path.parent
    except OSError:
        return False


def _with_parents(paths: Iterable[Path], roots: Sequence[Path]) -> list[Path]:
    out: dict[Path, None] = {}
    for path in paths:
        root = next(r for r in roots if path.is_relative_to(r))
        parents = [p for p in reversed(path.parents) if p != root and p.is_relative_to(root)]
        for parent in parents:
            out.setdefault(parent)
        out.setdefault(path)
    return list(out)


def unpack(images_dir: Path, root: Path = Path("/")) -> list[str]:
    """Recreate, under ``root``, each path of the rank's ``host-files.tar`` that is missing;
    returns those recreated."""
    archive_path = images_dir / ARCHIVE
    if not archive_path.is_file():
        return []
    made = []
    with tarfile.open(archive_path) as archive:
        for member in archive.getmembers():
            target = root / member.name
            if os.path.lexists(target):
                continue
            if not (member.isfile() or member.isdir() or member.isfifo()):
                continue
            if member.name.startswith("/") or ".." in Path(member.name).parts:
                continue
            if target.parent.exists() and not _plain(target):
                log.warning("host_file_not_restored", path=str(target), reason="symbolic link")
                continue
            archive.extract(member, path=root, set_attrs=True)
            made.append("/" + member.name)
    return made
