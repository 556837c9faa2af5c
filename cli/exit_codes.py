"""The one place where outcomes and errors become process exit codes (documented in README)."""

from __future__ import annotations

from enum import IntEnum

from crctl.errors import (
    ConfigError,
    ConflictError,
    CrctlError,
    NotFoundError,
    PrerequisiteError,
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


_BY_ERROR: tuple[tuple[type[CrctlError], ExitCode], ...] = (
    (ConfigError, ExitCode.USAGE),
    (UnavailableError, ExitCode.UNAVAILABLE),
    (NotFoundError, ExitCode.NOT_FOUND),
    (ConflictError, ExitCode.CONFLICT),
    (PrerequisiteError, ExitCode.PREREQUISITE),
)


def exit_code_for(error: CrctlError) -> ExitCode:
    for kind, code in _BY_ERROR:
        if isinstance(error, kind):
            return code
    return ExitCode.FAILED
