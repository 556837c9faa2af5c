"""The control-plane codec: messages survive a round trip; garbage is rejected clearly, as a
WireError and nothing else."""

from collections.abc import Callable
from typing import Any, Literal

import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

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


# --- properties, over messages generated from the schema itself ---------------------------------

_INTEGERS = {
    FieldDescriptor.CPPTYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: st.integers(0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: st.integers(0, 2**64 - 1),
}
Envelope = control_pb2.AgentMessage | control_pb2.CoordinatorMessage
ENVELOPES: list[tuple[type[Envelope], Callable[[bytes], Envelope]]] = [
    (control_pb2.AgentMessage, decode_agent_message),
    (control_pb2.CoordinatorMessage, decode_coordinator_message),
]


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=8)
    if field.cpp_type == FieldDescriptor.CPPTYPE_STRING:
        return st.text(max_size=8)
    if field.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return st.booleans()
    if field.cpp_type == FieldDescriptor.CPPTYPE_DOUBLE:
        return st.floats(allow_nan=False)
    if field.cpp_type == FieldDescriptor.CPPTYPE_FLOAT:
        return st.floats(allow_nan=False, width=32)
    if field.cpp_type == FieldDescriptor.CPPTYPE_ENUM:
        return st.sampled_from([value.number for value in field.enum_type.values])
    return _INTEGERS[field.cpp_type]


def _fill_field(draw: st.DrawFn, message: Message, field: FieldDescriptor) -> None:
    value = getattr(message, field.name)
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
        for key in draw(st.lists(_scalar(key_field), max_size=2, unique=True)):
            if value_field.message_type is None:
                value[key] = draw(_scalar(value_field))
            else:
                _fill(draw, value[key])
    elif field.is_repeated:
        for _ in range(draw(st.integers(0, 2))):
            if entry is None:
                value.append(draw(_scalar(field)))
            else:
                _fill(draw, value.add())
    elif entry is not None:
        value.SetInParent()
        _fill(draw, value)
    else:
        setattr(message, field.name, draw(_scalar(field)))


Body = Literal["one", "none", "any"]


def _fill(draw: st.DrawFn, message: Message, body: Body = "any") -> None:
    """Sets a random selection of ``message``'s fields; its oneof "body", if it has one, gets
    one of its fields, none, or either."""
    for field in message.DESCRIPTOR.fields:
        oneof = field.containing_oneof
        if oneof is not None and oneof.name != f"_{field.name}":  # a real oneof, not `optional`
            continue
        if draw(st.booleans()):
            _fill_field(draw, message, field)
    for oneof in message.DESCRIPTOR.oneofs:
        wanted = body if oneof.name == "body" else "any"
        if oneof.name == f"_{oneof.fields[0].name}" or wanted == "none":
            continue
        choices: list[FieldDescriptor | None] = list(oneof.fields)
        if wanted == "any":
            choices.append(None)
        field = draw(st.sampled_from(choices))
        if field is not None:
            _fill_field(draw, message, field)


@st.composite
def envelopes(draw: st.DrawFn, kind: type[Envelope], body: Body = "one") -> Envelope:
    message = kind()
    _fill(draw, message, body)
    return message


@st.composite
def damaged(draw: st.DrawFn, kind: type[Envelope]) -> bytes:
    """A valid frame truncated, with bytes flipped or inserted: near misses of real messages."""
    frame = bytearray(encode(draw(envelopes(kind))))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.integers(0, len(frame)))
        how = draw(st.sampled_from(["cut", "flip", "insert"]))
        if how == "cut":
            del frame[where:]
        elif how == "flip" and where < len(frame):
            frame[where] ^= draw(st.integers(1, 255))
        else:
            frame[where:where] = draw(st.binary(min_size=1, max_size=4))
    return bytes(frame)


PROPERTIES = settings(max_examples=200, deadline=None)


@pytest.mark.parametrize(("kind", "decode"), ENVELOPES)
@PROPERTIES
@given(data=st.data())
def test_every_message_with_a_body_survives_a_round_trip(
    kind: type[Envelope], decode: Callable[[bytes], Envelope], data: st.DataObject
) -> None:
    message = data.draw(envelopes(kind))
    decoded = decode(encode(message))
    assert decoded == message
    assert decoded.WhichOneof("body") == message.WhichOneof("body")


@pytest.mark.parametrize(("kind", "decode"), ENVELOPES)
@PROPERTIES
@given(data=st.data())
def test_a_message_without_a_body_is_refused_whatever_else_it_carries(
    kind: type[Envelope], decode: Callable[[bytes], Envelope], data: st.DataObject
) -> None:
    message = data.draw(envelopes(kind, "none"))
    with pytest.raises(WireError, match="no body"):
        decode(encode(message))


@pytest.mark.parametrize(("kind", "decode"), ENVELOPES)
@PROPERTIES
@given(data=st.data())
def test_any_bytes_decode_to_a_message_with_a_body_or_a_wire_error(
    kind: type[Envelope], decode: Callable[[bytes], Envelope], data: st.DataObject
) -> None:
    (other,) = {k for k, _ in ENVELOPES} - {kind}  # the other direction's messages
    frame = data.draw(st.one_of(st.binary(max_size=256), damaged(kind), damaged(other)))
    try:
        decoded = decode(frame)
    except WireError:
        return
    assert decoded.WhichOneof("body") is not None
