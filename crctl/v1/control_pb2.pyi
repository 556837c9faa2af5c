from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentInfo(_message.Message):
    __slots__ = ("host", "addresses", "criu_version", "capabilities", "agent_version", "pid")
    HOST_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    CRIU_VERSION_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    host: str
    addresses: _containers.RepeatedScalarFieldContainer[str]
    criu_version: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    agent_version: str
    pid: int
    def __init__(self, host: _Optional[str] = ..., addresses: _Optional[_Iterable[str]] = ..., criu_version: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., agent_version: _Optional[str] = ..., pid: _Optional[int] = ...) -> None: ...

class Register(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: AgentInfo
    def __init__(self, info: _Optional[_Union[AgentInfo, _Mapping]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("host", "sequence")
    HOST_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    host: str
    sequence: int
    def __init__(self, host: _Optional[str] = ..., sequence: _Optional[int] = ...) -> None: ...

class RegisterAck(_message.Message):
    __slots__ = ("accepted", "reason", "heartbeat_interval")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    heartbeat_interval: float
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ..., heartbeat_interval: _Optional[float] = ...) -> None: ...

class HeartbeatAck(_message.Message):
    __slots__ = ("known",)
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    known: bool
    def __init__(self, known: _Optional[bool] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("register", "heartbeat")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    register: Register
    heartbeat: Heartbeat
    def __init__(self, register: _Optional[_Union[Register, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class CoordinatorMessage(_message.Message):
    __slots__ = ("register_ack", "heartbeat_ack")
    REGISTER_ACK_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_ACK_FIELD_NUMBER: _ClassVar[int]
    register_ack: RegisterAck
    heartbeat_ack: HeartbeatAck
    def __init__(self, register_ack: _Optional[_Union[RegisterAck, _Mapping]] = ..., heartbeat_ack: _Optional[_Union[HeartbeatAck, _Mapping]] = ...) -> None: ...
