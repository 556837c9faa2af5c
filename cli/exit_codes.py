"""The one place where outcomes and errors become process exit codes (documented in README)."""

from __future__ import annotations

from enum import IntEnum

from crctl.errors import (
    ConfigError,
    ConflictError,
    CrctlError,
    NotFoundError,
    PermissionDeniedError,
    PrerequisiteError,
    UnauthenticatedError,
    UnavailableError,
)


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # the operation ran and failed (e.g. a checkpoint aborted)
    USAGE = 2  # bad arguments or configuration
    UNAVAILABLE = 3  # the coordinator (or an agent it needs) could not be reached
    NOT_FOUND = 4  # unknown job, checkpoint or host
    CONFLICT = 5  # refused: something else is under way
    PREREQUISITE = 6  # the host lacks something crctl needs (see `crctl doctor`)
    ABORTED = 7  # the checkpoint was aborted: the job runs on, the previous checkpoint is latest
    PERMISSION_DENIED = 8  # not yours: another user's job, or a plugin the admin did not install
    UNAUTHENTICATED = 9  # the coordinator could not tell who you are (no or bad credentials)


_BY_ERROR: tuple[tuple[type[CrctlError], ExitCode], ...] = (
    (ConfigError, ExitCode.USAGE),
    (UnavailableError, ExitCode.UNAVAILABLE),
    (NotFoundError, ExitCode.NOT_FOUND),
    (ConflictError, ExitCode.CONFLICT),
    (PrerequisiteError, ExitCode.PREREQUISITE),
    (PermissionDeniedError, ExitCode.PERMISSION_DENIED),
    (UnauthenticatedError, ExitCode.UNAUTHENTICATED),
)


def exit_code_for(error: CrctlError) -> ExitCode:
    for kind, code in _BY_ERROR:
        if isinstance(error, kind):
            return code
    return ExitCode.FAILED
