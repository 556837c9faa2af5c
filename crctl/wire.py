"""The control plane's codec: one protobuf message per ZeroMQ frame."""

from __future__ import annotations

from google.protobuf.message import DecodeError

from crctl.errors import CrctlError
from crctl.v1 import control_pb2

# The largest frame either end of the control plane accepts (ZMQ_MAXMSGSIZE). The largest real
# messages, a host's votes and restore orders listing every image file and socket of its ranks,
# take kilobytes to a few megabytes. ZeroMQ allocates a frame whole as soon as its length has
# arrived: without a bound, one peer past the CurveZMQ handshake (a broken agent, a stolen key)
# makes the daemon reserve gigabytes per message. Over the bound ZeroMQ drops the connection
# instead, and the peer reconnects.
MAX_MESSAGE_SIZE = 64 * 2**20


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
