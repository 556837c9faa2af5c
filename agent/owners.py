"""Whom a rank runs as: its job's owner, checked against this host's users before anything
runs or is restored."""

from __future__ import annotations

import pwd
from pathlib import Path

from agent.ranks import RunAs
from crctl.errors import ConfigError, PermissionDeniedError, PrerequisiteError
from crctl.v1 import control_pb2


def run_as_owner(order: control_pb2.LaunchRank, host: str) -> RunAs:
    """The credentials a rank gets: its owner's, who must be a user of this host. A root rank
    is refused unless the job's owner is root (the coordinator never asks for one otherwise:
    this is the agent's own check of its orders)."""
    owner = order.owner
    if owner.uid == 0 and owner.job_owner_uid != 0:
        raise PermissionDeniedError(
            f"refused: rank {order.rank} of job {order.job} would run as root, but the job "
            f"belongs to uid {owner.job_owner_uid}",
            job=order.job,
            host=host,
        )
    entry = require_user(owner.uid, owner.name, job=order.job, host=host)
    cwd = Path(order.cwd) if order.cwd else None
    if cwd is None and owner.uid != 0:
        cwd = Path(entry.pw_dir)
    if cwd is not None and not cwd.is_absolute():
        raise ConfigError(f"the working directory {order.cwd!r} is not absolute", job=order.job)
    return RunAs(
        uid=owner.uid,
        gid=owner.gid,
        groups=tuple(owner.groups),
        cwd=cwd,
        umask=order.umask & 0o777,
    )


def rank_environment(order: control_pb2.LaunchRank, run_as: RunAs) -> dict[str, str]:
    """The environment the order gives; if none, the agent's own for a root rank, and for
    anyone else the basics a login would set (never root's environment)."""
    if order.env or run_as.uid == 0:
        return dict(order.env)
    entry = pwd.getpwuid(run_as.uid)
    return {
        "HOME": entry.pw_dir,
        "USER": entry.pw_name,
        "LOGNAME": entry.pw_name,
        "SHELL": entry.pw_shell or "/bin/sh",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
    }


def require_user(uid: int, name: str, *, job: str, host: str) -> pwd.struct_passwd:
    """A job's ranks run as its owner: a host that does not know the owner's uid cannot run
    or restore them."""
    try:
        return pwd.getpwuid(uid)
    except KeyError:
        raise PrerequisiteError(
            f"{host} has no user with uid {uid} ({name or 'the owner'} of job {job}): add the "
            "user there (same uid) or choose other hosts",
            job=job,
            host=host,
        ) from None
