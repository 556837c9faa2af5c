"""Application-level rewiring as a restart plugin: text files a rank reads (a peers list, a
configuration file) get the new host names and addresses before the rank is restored.

Option ``rewrite_files`` (``--plugin-option rewrite_files=PATH[,PATH...]``): absolute paths on
the new host; ``{rank}`` stands for the rank's number. In each file, every old host name (from
``context.moves``) and every old address (from ``context.address_map``) becomes the new one,
in one simultaneous pass (h1->h2 with h2->h3 turns "h1 h2" into "h2 h3"), whole tokens only:

* a match may not touch a name character (letter, digit, ``_``, ``-``) on either side, nor a
  ``.`` leading into more of a name or address: ``h1`` is not in ``h10``, ``rack-h1`` or
  ``h1.example.org``; ``198.18.0.1`` is not in ``198.18.0.11``; a trailing full stop or
  ``:port`` is fine;
* an IPv6 address may also not be followed by ``:`` and a hex digit (``2001:db8::1`` is not in
  ``2001:db8::1:5``); it matches as written in the map (compressed, lower case);
* host names match case-sensitively, as given.

Files are read and written with the rights of the job's owner, never root's
(``agent.fs_owner``): a file the owner could not rewrite themselves is refused.

An old host whose ranks went to several new hosts (``context.splits``) has no single new name
or address: a listed file that names it, or one of its addresses, fails the restart, naming both.

A file is replaced atomically (a new file beside it, renamed in) with its mode and owner. The
restart fails, naming the file, if a listed file is missing, or if the rank holds it open: CRIU
recorded its size in the images and reopens it by path, so a rewrite would break the restore.

A file listed for several ranks of one host (without ``{rank}``) is rewritten once: the plugin
remembers, per path and mapping, the content it wrote, and leaves a file that still holds it
alone (a second pass of a mapping with chains would be wrong). That memory lives in the agent
process: after an agent restart, restore a rewritten file's original before restarting the job
with the same mapping again."""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import ClassVar

import structlog

from agent import images
from agent.fs_owner import as_owner
from crctl.plugins import PluginError, RestartContext, RestartPlugin

log = structlog.get_logger()

OPTION = "rewrite_files"
_NAME = rb"A-Za-z0-9_\-"
_BEFORE = rb"(?<![" + _NAME + rb".])"
_AFTER = rb"(?![" + _NAME + rb"])(?!\.[" + _NAME + rb"])"
_AFTER_IPV6 = _AFTER + rb"(?!:[0-9A-Fa-f:])"

HeldFiles = Callable[[Path], Iterable[images.RegularFile]]


def _held_files(images_dir: Path) -> Iterable[images.RegularFile]:
    return images.inspect(images_dir).regular_files


def replacements(context: RestartContext) -> dict[str, str]:
    """Old token -> new token: every moved host's name and every moved address."""
    tokens = {old: move.new_host for old, move in context.moves.items() if move.new_host != old}
    for old, new in context.address_map.items():
        if new != old:
            tokens[old] = new
    return tokens


def unsplittable(context: RestartContext) -> dict[str, str]:
    """Old token -> the old host it belongs to, for the names and addresses of the old hosts
    whose ranks went to several new hosts: they have no single new token."""
    tokens = {}
    for split in context.splits.values():
        for token in (split.old_host, *split.old_addresses):
            tokens[token] = split.old_host
    return tokens


def compile_replacements(tokens: Mapping[str, str]) -> re.Pattern[bytes] | None:
    """One pattern matching any old token as a whole token (longest first), or None."""
    if not tokens:
        return None
    alternatives = []
    for token in sorted(tokens, key=lambda t: (-len(t), t)):
        after = _AFTER_IPV6 if _is_ipv6(token) else _AFTER
        alternatives.append(re.escape(token.encode()) + after)
    return re.compile(_BEFORE + rb"(?:" + b"|".join(alternatives) + rb")")


def replace_tokens(
    data: bytes, tokens: Mapping[str, str], pattern: re.Pattern[bytes] | None = None
) -> tuple[bytes, int]:
    """``data`` with every old token replaced by its new one in a single pass, and the number
    of replacements."""
    pattern = pattern if pattern is not None else compile_replacements(tokens)
    if pattern is None:
        return data, 0
    encoded = {old.encode(): new.encode() for old, new in tokens.items()}
    return pattern.subn(lambda match: encoded[match.group(0)], data)


def _is_ipv6(token: str) -> bool:
    try:
        return ipaddress.ip_address(token).version == 6
    except ValueError:
        return False


class HostFiles(RestartPlugin):
    """Rewrites the files named by the ``rewrite_files`` option (see the module's doc)."""

    name: ClassVar[str] = "host-files"
    # (real path, mapping) -> sha256 of the content this process wrote there.
    _written: ClassVar[dict[tuple[str, tuple[tuple[str, str], ...]], str]] = {}

    def __init__(self, held_files: HeldFiles = _held_files) -> None:
        self._held_files = held_files

    async def before_restore(self, context: RestartContext) -> None:
        paths = self._paths(context)
        if not paths:
            return
        held = {f.path: f for f in self._held_files(context.images_dir) if not f.ghost}
        try:
            as_owner(
                context.owner_uid,
                context.owner_gid,
                context.owner_groups,
                lambda: self._rewrite_all(paths, held, context),
            )
        except OSError as exc:  # the owner may not even look at a path they named
            raise _failure(
                context, f"cannot rewrite {exc.filename}: {exc.strerror or exc}", exc.errno
            ) from exc

    def _rewrite_all(
        self, paths: list[Path], held: Mapping[str, images.RegularFile], context: RestartContext
    ) -> None:
        for path in paths:
            if not path.is_file():
                raise _failure(
                    context,
                    f"{path} is missing on {context.new_host}"
                    if not path.exists()
                    else f"{path} is not a regular file",
                )
            found = held.get(str(path)) or held.get(os.path.realpath(path))
            if found is not None:
                size = "" if found.size is None else f" (dumped at {found.size} bytes)"
                raise _failure(
                    context,
                    f"rank {context.rank} holds it open{size}, so CRIU reopens it at restore "
                    f"and it cannot be rewritten: {path}",
                )
        tokens = replacements(context)
        pattern = compile_replacements(tokens)
        mapping = tuple(sorted(tokens.items()))
        for path in paths:
            _refuse_split_hosts(path, context)
        for path in paths:
            self._rewrite(path, tokens, pattern, mapping, context)

    def _paths(self, context: RestartContext) -> list[Path]:
        paths: list[Path] = []
        for item in context.options.get(OPTION, "").split(","):
            item = item.strip().replace("{rank}", str(context.rank))
            if not item:
                continue
            path = Path(item)
            if not path.is_absolute():
                raise _failure(context, f"{item} is not an absolute path")
            if path not in paths:
                paths.append(path)
        return paths

    def _rewrite(
        self,
        path: Path,
        tokens: Mapping[str, str],
        pattern: re.Pattern[bytes] | None,
        mapping: tuple[tuple[str, str], ...],
        context: RestartContext,
    ) -> None:
        key = (os.path.realpath(path), mapping)
        try:
            data = path.read_bytes()
            if self._written.get(key) == hashlib.sha256(data).hexdigest():
                log.info(
                    "plugin_host_file_already_rewritten",
                    job=context.job,
                    checkpoint=context.checkpoint,
                    host=context.new_host,
                    phase="before_restore",
                    rank=context.rank,
                    path=str(path),
                )
                return
            new, count = replace_tokens(data, tokens, pattern)
            if count:
                _replace_file(path, new)
        except OSError as exc:
            raise _failure(
                context, f"cannot rewrite {path}: {exc.strerror or exc}", exc.errno
            ) from exc
        self._written[key] = hashlib.sha256(new).hexdigest()
        log.info(
            "plugin_host_file_rewritten",
            job=context.job,
            checkpoint=context.checkpoint,
            host=context.new_host,
            phase="before_restore",
            rank=context.rank,
            path=str(path),
            replacements=count,
        )


def _refuse_split_hosts(path: Path, context: RestartContext) -> None:
    """A file naming an old host whose ranks went to several new hosts (or one of its addresses)
    cannot be rewritten: which of them is meant is not in the file."""
    split = unsplittable(context)
    pattern = compile_replacements(split)
    if pattern is None:
        return
    try:
        found = pattern.search(path.read_bytes())
    except OSError as exc:
        raise _failure(context, f"cannot read {path}: {exc.strerror or exc}", exc.errno) from exc
    if found is None:
        return
    token = found.group(0).decode()
    host = context.splits[split[token]]
    raise _failure(
        context,
        f"{path} names {token}, but the ranks of {host.old_host} go to "
        f"{', '.join(host.new_hosts)}, so it has no single new name or address: keep "
        f"{host.old_host}'s ranks on one host, or leave the file out of {OPTION}",
    )


def _failure(context: RestartContext, message: str, errno: int | None = None) -> PluginError:
    """This plugin's error for the rank being restored (its option named first)."""
    return PluginError(
        f"{OPTION}: {message}",
        job=context.job,
        checkpoint=context.checkpoint,
        host=context.new_host,
        phase="before_restore",
        errno=errno,
    )


def _replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` beside ``path`` and rename it over it, with its mode and owner."""
    target = Path(os.path.realpath(path))  # replace the file a symbolic link points to
    os.close(os.open(target, os.O_WRONLY))  # may this thread write it? (fsuid: agent.fs_owner)
    st = target.stat()
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), st.st_mode & 0o7777)
            os.fchown(f.fileno(), st.st_uid, st.st_gid)
            os.fsync(f.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
