from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChunkError(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHUNK_ERROR_UNSPECIFIED: _ClassVar[ChunkError]
    CHUNK_ERROR_NOT_FOUND: _ClassVar[ChunkError]
    CHUNK_ERROR_REFUSED: _ClassVar[ChunkError]
    CHUNK_ERROR_BAD_REQUEST: _ClassVar[ChunkError]
    CHUNK_ERROR_IO: _ClassVar[ChunkError]
CHUNK_ERROR_UNSPECIFIED: ChunkError
CHUNK_ERROR_NOT_FOUND: ChunkError
CHUNK_ERROR_REFUSED: ChunkError
CHUNK_ERROR_BAD_REQUEST: ChunkError
CHUNK_ERROR_IO: ChunkError

class ChunkRequest(_message.Message):
    __slots__ = ("tag", "job", "checkpoint", "path", "offset", "length")
    TAG_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    tag: int
    job: str
    checkpoint: str
    path: str
    offset: int
    length: int
    def __init__(self, tag: _Optional[int] = ..., job: _Optional[str] = ..., checkpoint: _Optional[str] = ..., path: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class ChunkReply(_message.Message):
    __slots__ = ("tag", "error", "reason", "file_size")
    TAG_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    tag: int
    error: ChunkError
    reason: str
    file_size: int
    def __init__(self, tag: _Optional[int] = ..., error: _Optional[_Union[ChunkError, str]] = ..., reason: _Optional[str] = ..., file_size: _Optional[int] = ...) -> None: ...
