"""The one place where crctl errors and gRPC statuses are mapped, both ways.

A status the coordinator sets itself is a ``google.rpc.Status`` (AIP-193): the code, the
error's message, and an ``ErrorInfo`` in its details whose ``reason`` names the kind of error
(NOT_FOUND, CONFLICT, CRIU_FAILED, ...), ``domain`` is ``crctl`` and ``metadata`` holds the
error's context (job, checkpoint, host, rank, phase, errno). gRPC carries it in the
``grpc-status-details-bin`` trailer; clients decode it back into the same crctl error, so a
message reads the same on both sides. A status without it did not come from the coordinator
(a transport failure)."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

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

DOMAIN = "crctl"
DETAILS_KEY = "grpc-status-details-bin"

# (error class, gRPC code, ErrorInfo reason); the first matching class wins.
_KINDS: tuple[tuple[type[CrctlError], grpc.StatusCode, str], ...] = (
    (NotFoundError, grpc.StatusCode.NOT_FOUND, "NOT_FOUND"),
    (ConflictError, grpc.StatusCode.ABORTED, "CONFLICT"),
    (ConfigError, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE"),
    (PrerequisiteError, grpc.StatusCode.FAILED_PRECONDITION, "PREREQUISITE_MISSING"),
    (CriuError, grpc.StatusCode.INTERNAL, "CRIU_FAILED"),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"),
)
_UNKNOWN_REASON = "COORDINATOR_ERROR"
_INT_FIELDS = ("rank", "errno")
_FIELDS = ("job", "checkpoint", "host", "rank", "phase", "errno")


def status_for(error: CrctlError) -> grpc.StatusCode:
    for kind, code, _ in _KINDS:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.UNKNOWN


def reason_for(error: CrctlError) -> str:
    for kind, _, reason in _KINDS:
        if isinstance(error, kind):
            return reason
    return _UNKNOWN_REASON


def error_info(error: CrctlError, reason: str = "") -> error_details_pb2.ErrorInfo:
    """The ErrorInfo of ``error``: its reason (or ``reason``) and its context fields."""
    info = error_details_pb2.ErrorInfo(reason=reason or reason_for(error), domain=DOMAIN)
    for key, value in error.fields().items():
        info.metadata[key] = str(value)
    return info


def rich_status(
    error: CrctlError, *extra: object, code: grpc.StatusCode | None = None, reason: str = ""
) -> status_pb2.Status:
    """``error`` as a google.rpc.Status: its message, ErrorInfo first in the details, then
    ``extra`` messages (e.g. the outcome of a failed operation)."""
    status = status_pb2.Status(code=(code or status_for(error)).value[0], message=error.message)
    for message in (error_info(error, reason), *extra):
        packed = any_pb2.Any()
        packed.Pack(message)  # type: ignore[arg-type]  # Any.Pack takes any Message
        status.details.append(packed)
    return status


def trailer(status: status_pb2.Status) -> tuple[tuple[str, bytes]]:
    """The trailing metadata that carries ``status`` to gRPC clients."""
    return ((DETAILS_KEY, status.SerializeToString()),)


def _code(value: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code
    return grpc.StatusCode.UNKNOWN


def error_from_status(status: status_pb2.Status) -> CrctlError | None:
    """The crctl error a coordinator's status stands for; None without crctl's ErrorInfo."""
    for packed in status.details:
        info = error_details_pb2.ErrorInfo()
        if packed.Unpack(info) and info.domain == DOMAIN:  # False for another type
            break
    else:
        return None
    kind = next((k for k, _, reason in _KINDS if reason == info.reason), None)
    if kind is None:
        kind = next((k for k, code, _ in _KINDS if code == _code(status.code)), CrctlError)
    fields: dict[str, str | int] = {}
    for key in _FIELDS:
        if key in info.metadata:
            value = info.metadata[key]
            fields[key] = (
                int(value) if key in _INT_FIELDS and value.lstrip("-").isdigit() else value
            )
    return kind(status.message, **fields)  # type: ignore[arg-type]


def error_from_call(exc: grpc.RpcError) -> CrctlError | None:
    """The crctl error a failed call carries (its ErrorInfo), or None for a status that did
    not come from the coordinator."""
    if not isinstance(exc, grpc.Call):
        return None
    status = rpc_status.from_call(exc)
    return error_from_status(status) if status is not None else None


def error_for(code: grpc.StatusCode, details: str) -> CrctlError:
    """The crctl error for a failed call without crctl's ErrorInfo (the message kept)."""
    for kind, mapped, _ in _KINDS:
        if mapped == code:
            return kind(details)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return UnavailableError(f"the coordinator did not answer in time: {details}")
    return CrctlError(details)
