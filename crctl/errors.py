"""The project's exception hierarchy. Every error carries the fields an operator needs
(job, checkpoint, host, rank, phase, errno) and renders as one readable line.

Mapping to gRPC statuses (codes and ErrorInfo) lives in ``crctl.status``; mapping to CLI exit
codes lives in ``cli.exit_codes``. Nowhere else."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple


class CrctlError(Exception):
    """Base class: a message a person can act on, plus structured context fields."""

    def __init__(
        self,
        message: str,
        *,
        job: str | None = None,
        checkpoint: str | None = None,
        host: str | None = None,
        rank: int | None = None,
        phase: str | None = None,
        errno: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.job = job
        self.checkpoint = checkpoint
        self.host = host
        self.rank = rank
        self.phase = phase
        self.errno = errno

    def fields(self) -> dict[str, Any]:
        """The non-empty context fields, for structured logs."""
        raw = {
            "job": self.job,
            "checkpoint": self.checkpoint,
            "host": self.host,
            "rank": self.rank,
            "phase": self.phase,
            "errno": self.errno,
        }
        return {k: v for k, v in raw.items() if v is not None}

    def __str__(self) -> str:
        context = " ".join(f"{k}={v}" for k, v in self.fields().items())
        return f"{self.message} ({context})" if context else self.message


class ConfigError(CrctlError):
    """A configuration value, file or flag is malformed."""


class NotFoundError(CrctlError):
    """An unknown job, checkpoint or host was named."""


class ConflictError(CrctlError):
    """The request clashes with something already under way (e.g. a checkpoint in progress)."""


class UnavailableError(CrctlError):
    """A daemon (coordinator or agent) could not be reached."""


class CoordinatorUnreachableError(UnavailableError):
    """A client could not reach the coordinator at all (a transport failure, not an answer of
    the coordinator's)."""


class CriuError(CrctlError):
    """CRIU failed; ``message`` carries CRIU's own reason and the log path."""


class PrerequisiteError(CrctlError):
    """Something the host must provide (root, CRIU, nft, namespaces) is missing."""


class PermissionDeniedError(CrctlError):
    """The caller is known but may not do this (another user's job, a plugin not the admin's)."""


class UnauthenticatedError(CrctlError):
    """The caller could not be identified (no credentials, or credentials not accepted)."""


class SourceFailure(NamedTuple):
    """Why one host that holds a rank's images did not give them."""

    host: str
    reason: str  # e.g. "no such file rank-2/pages-1.img", "unreachable (no answer in 10s)"
    rank: int
    damaged: bool = False  # its copy differs from the manifest (not: it could not be asked)


class ImageFetchError(CrctlError):
    """A rank's checkpoint images could not be fetched: every host holding them failed (each
    one, in the order tried, in ``failures``), or the local store refused them (a file there
    differs from the manifest, a path that leaves the store). ``rank`` is unset when several
    ranks failed (``failures`` then names each one's)."""

    def __init__(
        self,
        message: str,
        *,
        job: str | None = None,
        checkpoint: str | None = None,
        host: str | None = None,
        rank: int | None = None,
        failures: Sequence[SourceFailure] = (),
        damaged_ranks: Sequence[int] = (),
    ) -> None:
        super().__init__(message, job=job, checkpoint=checkpoint, host=host, rank=rank)
        self.failures = tuple(failures)
        # The ranks every source of which was tried and holds a copy that differs from the
        # manifest: no intact copy of their images is left on any host that holds them.
        self.damaged_ranks = tuple(sorted(set(damaged_ranks)))
