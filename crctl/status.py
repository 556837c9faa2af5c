"""The one place where crctl errors and gRPC status codes are mapped, both ways."""

from __future__ import annotations

import grpc

from crctl.errors import (
    ConfigError,
    ConflictError,
    CrctlError,
    CriuError,
    NotFoundError,
    PermissionDeniedError,
    PrerequisiteError,
    UnauthenticatedError,
    UnavailableError,
)

# Trailing metadata key on every status the coordinator sets itself (value: the error class).
ERROR_METADATA = "crctl-error"

_TO_STATUS: tuple[tuple[type[CrctlError], grpc.StatusCode], ...] = (
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (ConflictError, grpc.StatusCode.ABORTED),
    (ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (PrerequisiteError, grpc.StatusCode.FAILED_PRECONDITION),
    (CriuError, grpc.StatusCode.INTERNAL),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
)


def status_for(error: CrctlError) -> grpc.StatusCode:
    for kind, code in _TO_STATUS:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.UNKNOWN


def error_for(code: grpc.StatusCode, details: str) -> CrctlError:
    """The crctl error a client raises for a failed call (the server's message kept as is)."""
    for kind, mapped in _TO_STATUS:
        if mapped == code:
            return kind(details)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return UnavailableError(f"the coordinator did not answer in time: {details}")
    return CrctlError(details)
