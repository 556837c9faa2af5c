"""The control plane's codec: one protobuf message per ZeroMQ frame."""

from __future__ import annotations

from google.protobuf.message import DecodeError

from crctl.errors import CrctlError
from crctl.v1 import control_pb2


class WireError(CrctlError):
    """A frame that is not a valid control-plane message."""


def encode(message: control_pb2.AgentMessage | control_pb2.CoordinatorMessage) -> bytes:
    return message.SerializeToString()


def decode_agent_message(frame: bytes) -> control_pb2.AgentMessage:
    message = control_pb2.AgentMessage()
    try:
        message.ParseFromString(frame)
    except DecodeError as exc:
        raise WireError(f"malformed agent message: {exc}") from None
    if message.WhichOneof("body") is None:
        raise WireError("agent message with no body")
    return message


def decode_coordinator_message(frame: bytes) -> control_pb2.CoordinatorMessage:
    message = control_pb2.CoordinatorMessage()
    try:
        message.ParseFromString(frame)
    except DecodeError as exc:
        raise WireError(f"malformed coordinator message: {exc}") from None
    if message.WhichOneof("body") is None:
        raise WireError("coordinator message with no body")
    return message
