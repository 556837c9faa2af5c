"""The control-plane codec: messages survive a round trip; garbage is rejected clearly."""

import pytest

from crctl.v1 import control_pb2
from crctl.wire import WireError, decode_agent_message, decode_coordinator_message, encode


def test_register_message_round_trips_with_every_field() -> None:
    message = control_pb2.AgentMessage()
    info = message.register.info
    info.host = "h1"
    info.addresses.extend(["198.18.0.11", "fd00::11"])
    info.criu_version = "4.1.1"
    info.capabilities.extend(["criu", "nft"])
    info.agent_version = "0.1.0"
    info.pid = 4242

    decoded = decode_agent_message(encode(message))

    assert decoded == message
    assert decoded.WhichOneof("body") == "register"


def test_coordinator_reply_round_trips() -> None:
    message = control_pb2.CoordinatorMessage()
    message.register_ack.accepted = False
    message.register_ack.reason = "host name mismatch"
    assert decode_coordinator_message(encode(message)) == message


def test_malformed_frame_is_a_wire_error() -> None:
    with pytest.raises(WireError, match="malformed"):
        decode_agent_message(b"\xff\xff\xff")


def test_message_without_body_is_rejected() -> None:
    with pytest.raises(WireError, match="no body"):
        decode_coordinator_message(b"")
