from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DigestAlgorithm(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIGEST_ALGORITHM_UNSPECIFIED: _ClassVar[DigestAlgorithm]
    DIGEST_ALGORITHM_SHA256: _ClassVar[DigestAlgorithm]
    DIGEST_ALGORITHM_BLAKE3: _ClassVar[DigestAlgorithm]
DIGEST_ALGORITHM_UNSPECIFIED: DigestAlgorithm
DIGEST_ALGORITHM_SHA256: DigestAlgorithm
DIGEST_ALGORITHM_BLAKE3: DigestAlgorithm

class AgentInfo(_message.Message):
    __slots__ = ("host", "addresses", "criu_version", "capabilities", "agent_version", "pid", "ranks", "awaiting_decision", "restoring", "image_endpoint", "image_server_key")
    HOST_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    CRIU_VERSION_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    AWAITING_DECISION_FIELD_NUMBER: _ClassVar[int]
    RESTORING_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SERVER_KEY_FIELD_NUMBER: _ClassVar[int]
    host: str
    addresses: _containers.RepeatedScalarFieldContainer[str]
    criu_version: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    agent_version: str
    pid: int
    ranks: _containers.RepeatedCompositeFieldContainer[RankRef]
    awaiting_decision: _containers.RepeatedScalarFieldContainer[str]
    restoring: _containers.RepeatedScalarFieldContainer[str]
    image_endpoint: str
    image_server_key: bytes
    def __init__(self, host: _Optional[str] = ..., addresses: _Optional[_Iterable[str]] = ..., criu_version: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., agent_version: _Optional[str] = ..., pid: _Optional[int] = ..., ranks: _Optional[_Iterable[_Union[RankRef, _Mapping]]] = ..., awaiting_decision: _Optional[_Iterable[str]] = ..., restoring: _Optional[_Iterable[str]] = ..., image_endpoint: _Optional[str] = ..., image_server_key: _Optional[bytes] = ...) -> None: ...

class RankRef(_message.Message):
    __slots__ = ("job", "rank", "pid")
    JOB_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    job: str
    rank: int
    pid: int
    def __init__(self, job: _Optional[str] = ..., rank: _Optional[int] = ..., pid: _Optional[int] = ...) -> None: ...

class Register(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: AgentInfo
    def __init__(self, info: _Optional[_Union[AgentInfo, _Mapping]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("host", "sequence", "awaiting_decision", "restoring")
    HOST_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    AWAITING_DECISION_FIELD_NUMBER: _ClassVar[int]
    RESTORING_FIELD_NUMBER: _ClassVar[int]
    host: str
    sequence: int
    awaiting_decision: _containers.RepeatedScalarFieldContainer[str]
    restoring: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, host: _Optional[str] = ..., sequence: _Optional[int] = ..., awaiting_decision: _Optional[_Iterable[str]] = ..., restoring: _Optional[_Iterable[str]] = ...) -> None: ...

class RegisterAck(_message.Message):
    __slots__ = ("accepted", "reason", "heartbeat_interval", "agent_keys")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    AGENT_KEYS_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    heartbeat_interval: float
    agent_keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ..., heartbeat_interval: _Optional[float] = ..., agent_keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class HeartbeatAck(_message.Message):
    __slots__ = ("known",)
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    known: bool
    def __init__(self, known: _Optional[bool] = ...) -> None: ...

class LaunchRank(_message.Message):
    __slots__ = ("job", "rank", "argv", "env", "owner", "cwd", "umask")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    ARGV_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    UMASK_FIELD_NUMBER: _ClassVar[int]
    job: str
    rank: int
    argv: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    owner: RankOwner
    cwd: str
    umask: int
    def __init__(self, job: _Optional[str] = ..., rank: _Optional[int] = ..., argv: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., owner: _Optional[_Union[RankOwner, _Mapping]] = ..., cwd: _Optional[str] = ..., umask: _Optional[int] = ...) -> None: ...

class RankOwner(_message.Message):
    __slots__ = ("job_owner_uid", "uid", "gid", "groups", "name")
    JOB_OWNER_UID_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    job_owner_uid: int
    uid: int
    gid: int
    groups: _containers.RepeatedScalarFieldContainer[int]
    name: str
    def __init__(self, job_owner_uid: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., groups: _Optional[_Iterable[int]] = ..., name: _Optional[str] = ...) -> None: ...

class RankLaunched(_message.Message):
    __slots__ = ("job", "rank", "pid", "error")
    JOB_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    job: str
    rank: int
    pid: int
    error: str
    def __init__(self, job: _Optional[str] = ..., rank: _Optional[int] = ..., pid: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class RankExited(_message.Message):
    __slots__ = ("job", "rank", "exit_status")
    JOB_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    EXIT_STATUS_FIELD_NUMBER: _ClassVar[int]
    job: str
    rank: int
    exit_status: int
    def __init__(self, job: _Optional[str] = ..., rank: _Optional[int] = ..., exit_status: _Optional[int] = ...) -> None: ...

class KillJob(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: str
    def __init__(self, job: _Optional[str] = ...) -> None: ...

class JobKilled(_message.Message):
    __slots__ = ("job", "ranks")
    JOB_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    job: str
    ranks: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, job: _Optional[str] = ..., ranks: _Optional[_Iterable[int]] = ...) -> None: ...

class PrepareCheckpoint(_message.Message):
    __slots__ = ("job", "checkpoint", "ranks", "images_dir", "leave_running", "hold_timeout")
    JOB_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_DIR_FIELD_NUMBER: _ClassVar[int]
    LEAVE_RUNNING_FIELD_NUMBER: _ClassVar[int]
    HOLD_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    job: str
    checkpoint: str
    ranks: _containers.RepeatedScalarFieldContainer[int]
    images_dir: str
    leave_running: bool
    hold_timeout: float
    def __init__(self, job: _Optional[str] = ..., checkpoint: _Optional[str] = ..., ranks: _Optional[_Iterable[int]] = ..., images_dir: _Optional[str] = ..., leave_running: _Optional[bool] = ..., hold_timeout: _Optional[float] = ...) -> None: ...

class CheckpointReady(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    def __init__(self, checkpoint: _Optional[str] = ...) -> None: ...

class FreezeCheckpoint(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    def __init__(self, checkpoint: _Optional[str] = ...) -> None: ...

class FileDigest(_message.Message):
    __slots__ = ("path", "size", "sha256", "algorithm", "digest")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    path: str
    size: int
    sha256: str
    algorithm: DigestAlgorithm
    digest: str
    def __init__(self, path: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., algorithm: _Optional[_Union[DigestAlgorithm, str]] = ..., digest: _Optional[str] = ...) -> None: ...

class SocketInfo(_message.Message):
    __slots__ = ("family", "state", "local_address", "local_port", "peer_address", "peer_port", "proto")
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_PORT_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PEER_PORT_FIELD_NUMBER: _ClassVar[int]
    PROTO_FIELD_NUMBER: _ClassVar[int]
    family: str
    state: str
    local_address: str
    local_port: int
    peer_address: str
    peer_port: int
    proto: str
    def __init__(self, family: _Optional[str] = ..., state: _Optional[str] = ..., local_address: _Optional[str] = ..., local_port: _Optional[int] = ..., peer_address: _Optional[str] = ..., peer_port: _Optional[int] = ..., proto: _Optional[str] = ...) -> None: ...

class RankImage(_message.Message):
    __slots__ = ("rank", "host", "pid", "files", "bytes", "dump_seconds", "stdout_pipe", "host_addresses", "sockets", "copies")
    RANK_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    DUMP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STDOUT_PIPE_FIELD_NUMBER: _ClassVar[int]
    HOST_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    SOCKETS_FIELD_NUMBER: _ClassVar[int]
    COPIES_FIELD_NUMBER: _ClassVar[int]
    rank: int
    host: str
    pid: int
    files: _containers.RepeatedCompositeFieldContainer[FileDigest]
    bytes: int
    dump_seconds: float
    stdout_pipe: str
    host_addresses: _containers.RepeatedScalarFieldContainer[str]
    sockets: _containers.RepeatedCompositeFieldContainer[SocketInfo]
    copies: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, rank: _Optional[int] = ..., host: _Optional[str] = ..., pid: _Optional[int] = ..., files: _Optional[_Iterable[_Union[FileDigest, _Mapping]]] = ..., bytes: _Optional[int] = ..., dump_seconds: _Optional[float] = ..., stdout_pipe: _Optional[str] = ..., host_addresses: _Optional[_Iterable[str]] = ..., sockets: _Optional[_Iterable[_Union[SocketInfo, _Mapping]]] = ..., copies: _Optional[_Iterable[str]] = ...) -> None: ...

class CheckpointVote(_message.Message):
    __slots__ = ("checkpoint", "yes", "reason", "failed_rank", "ranks", "connections")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    YES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FAILED_RANK_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    yes: bool
    reason: str
    failed_rank: int
    ranks: _containers.RepeatedCompositeFieldContainer[RankImage]
    connections: _containers.RepeatedCompositeFieldContainer[SocketInfo]
    def __init__(self, checkpoint: _Optional[str] = ..., yes: _Optional[bool] = ..., reason: _Optional[str] = ..., failed_rank: _Optional[int] = ..., ranks: _Optional[_Iterable[_Union[RankImage, _Mapping]]] = ..., connections: _Optional[_Iterable[_Union[SocketInfo, _Mapping]]] = ...) -> None: ...

class CommitCheckpoint(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    def __init__(self, checkpoint: _Optional[str] = ...) -> None: ...

class CommitResult(_message.Message):
    __slots__ = ("checkpoint", "ok", "reason", "frozen_seconds", "ranks")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FROZEN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    ok: bool
    reason: str
    frozen_seconds: float
    ranks: _containers.RepeatedCompositeFieldContainer[RankImage]
    def __init__(self, checkpoint: _Optional[str] = ..., ok: _Optional[bool] = ..., reason: _Optional[str] = ..., frozen_seconds: _Optional[float] = ..., ranks: _Optional[_Iterable[_Union[RankImage, _Mapping]]] = ...) -> None: ...

class AbortCheckpoint(_message.Message):
    __slots__ = ("checkpoint", "reason")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    reason: str
    def __init__(self, checkpoint: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class AbortResult(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    def __init__(self, checkpoint: _Optional[str] = ...) -> None: ...

class RestoreRank(_message.Message):
    __slots__ = ("rank", "image", "local_address_map", "peer_address_map", "sources")
    class LocalAddressMapEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class PeerAddressMapEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RANK_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ADDRESS_MAP_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_MAP_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    rank: int
    image: RankImage
    local_address_map: _containers.ScalarMap[str, str]
    peer_address_map: _containers.ScalarMap[str, str]
    sources: _containers.RepeatedCompositeFieldContainer[ImageHolder]
    def __init__(self, rank: _Optional[int] = ..., image: _Optional[_Union[RankImage, _Mapping]] = ..., local_address_map: _Optional[_Mapping[str, str]] = ..., peer_address_map: _Optional[_Mapping[str, str]] = ..., sources: _Optional[_Iterable[_Union[ImageHolder, _Mapping]]] = ...) -> None: ...

class ImageHolder(_message.Message):
    __slots__ = ("host", "endpoint", "server_key")
    HOST_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    SERVER_KEY_FIELD_NUMBER: _ClassVar[int]
    host: str
    endpoint: str
    server_key: bytes
    def __init__(self, host: _Optional[str] = ..., endpoint: _Optional[str] = ..., server_key: _Optional[bytes] = ...) -> None: ...

class CopyImages(_message.Message):
    __slots__ = ("job", "checkpoint", "checkpoint_dir", "ranks")
    JOB_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_DIR_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    job: str
    checkpoint: str
    checkpoint_dir: str
    ranks: _containers.RepeatedCompositeFieldContainer[RestoreRank]
    def __init__(self, job: _Optional[str] = ..., checkpoint: _Optional[str] = ..., checkpoint_dir: _Optional[str] = ..., ranks: _Optional[_Iterable[_Union[RestoreRank, _Mapping]]] = ...) -> None: ...

class ImagesCopied(_message.Message):
    __slots__ = ("checkpoint", "ok", "reason", "ranks", "bytes", "seconds")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    ok: bool
    reason: str
    ranks: _containers.RepeatedScalarFieldContainer[int]
    bytes: int
    seconds: float
    def __init__(self, checkpoint: _Optional[str] = ..., ok: _Optional[bool] = ..., reason: _Optional[str] = ..., ranks: _Optional[_Iterable[int]] = ..., bytes: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class DropImages(_message.Message):
    __slots__ = ("job", "checkpoint", "checkpoint_dir")
    JOB_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_DIR_FIELD_NUMBER: _ClassVar[int]
    job: str
    checkpoint: str
    checkpoint_dir: str
    def __init__(self, job: _Optional[str] = ..., checkpoint: _Optional[str] = ..., checkpoint_dir: _Optional[str] = ...) -> None: ...

class ImagesDropped(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    def __init__(self, checkpoint: _Optional[str] = ...) -> None: ...

class VerifyImages(_message.Message):
    __slots__ = ("job", "checkpoint", "checkpoint_dir", "ranks")
    JOB_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_DIR_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    job: str
    checkpoint: str
    checkpoint_dir: str
    ranks: _containers.RepeatedCompositeFieldContainer[RankImage]
    def __init__(self, job: _Optional[str] = ..., checkpoint: _Optional[str] = ..., checkpoint_dir: _Optional[str] = ..., ranks: _Optional[_Iterable[_Union[RankImage, _Mapping]]] = ...) -> None: ...

class ImageProblem(_message.Message):
    __slots__ = ("path", "kind", "detail")
    PATH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    path: str
    kind: str
    detail: str
    def __init__(self, path: _Optional[str] = ..., kind: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ImagesVerified(_message.Message):
    __slots__ = ("checkpoint", "problems")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    problems: _containers.RepeatedCompositeFieldContainer[ImageProblem]
    def __init__(self, checkpoint: _Optional[str] = ..., problems: _Optional[_Iterable[_Union[ImageProblem, _Mapping]]] = ...) -> None: ...

class PrepareRestore(_message.Message):
    __slots__ = ("job", "restore", "checkpoint", "checkpoint_dir", "ranks", "address_map", "host_map", "host_addresses", "plugins", "plugin_options", "hold_timeout", "close_connections", "lazy_pages", "peer_ranks", "owner_uid", "owner", "split_hosts")
    class AddressMapEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class HostMapEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class HostAddressesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class PluginOptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class SplitHostsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_DIR_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_MAP_FIELD_NUMBER: _ClassVar[int]
    HOST_MAP_FIELD_NUMBER: _ClassVar[int]
    HOST_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    PLUGINS_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    HOLD_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    CLOSE_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    LAZY_PAGES_FIELD_NUMBER: _ClassVar[int]
    PEER_RANKS_FIELD_NUMBER: _ClassVar[int]
    OWNER_UID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SPLIT_HOSTS_FIELD_NUMBER: _ClassVar[int]
    job: str
    restore: str
    checkpoint: str
    checkpoint_dir: str
    ranks: _containers.RepeatedCompositeFieldContainer[RestoreRank]
    address_map: _containers.ScalarMap[str, str]
    host_map: _containers.ScalarMap[str, str]
    host_addresses: _containers.ScalarMap[str, str]
    plugins: _containers.RepeatedScalarFieldContainer[str]
    plugin_options: _containers.ScalarMap[str, str]
    hold_timeout: float
    close_connections: _containers.RepeatedScalarFieldContainer[str]
    lazy_pages: bool
    peer_ranks: _containers.RepeatedCompositeFieldContainer[RestoreRank]
    owner_uid: int
    owner: str
    split_hosts: _containers.ScalarMap[str, str]
    def __init__(self, job: _Optional[str] = ..., restore: _Optional[str] = ..., checkpoint: _Optional[str] = ..., checkpoint_dir: _Optional[str] = ..., ranks: _Optional[_Iterable[_Union[RestoreRank, _Mapping]]] = ..., address_map: _Optional[_Mapping[str, str]] = ..., host_map: _Optional[_Mapping[str, str]] = ..., host_addresses: _Optional[_Mapping[str, str]] = ..., plugins: _Optional[_Iterable[str]] = ..., plugin_options: _Optional[_Mapping[str, str]] = ..., hold_timeout: _Optional[float] = ..., close_connections: _Optional[_Iterable[str]] = ..., lazy_pages: _Optional[bool] = ..., peer_ranks: _Optional[_Iterable[_Union[RestoreRank, _Mapping]]] = ..., owner_uid: _Optional[int] = ..., owner: _Optional[str] = ..., split_hosts: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RestoreStep(_message.Message):
    __slots__ = ("restore", "step")
    RESTORE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    restore: str
    step: str
    def __init__(self, restore: _Optional[str] = ..., step: _Optional[str] = ...) -> None: ...

class RankPid(_message.Message):
    __slots__ = ("rank", "pid")
    RANK_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    rank: int
    pid: int
    def __init__(self, rank: _Optional[int] = ..., pid: _Optional[int] = ...) -> None: ...

class RestoreResult(_message.Message):
    __slots__ = ("restore", "step", "ok", "reason", "failed_rank", "pids", "images_damaged")
    RESTORE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FAILED_RANK_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_DAMAGED_FIELD_NUMBER: _ClassVar[int]
    restore: str
    step: str
    ok: bool
    reason: str
    failed_rank: int
    pids: _containers.RepeatedCompositeFieldContainer[RankPid]
    images_damaged: bool
    def __init__(self, restore: _Optional[str] = ..., step: _Optional[str] = ..., ok: _Optional[bool] = ..., reason: _Optional[str] = ..., failed_rank: _Optional[int] = ..., pids: _Optional[_Iterable[_Union[RankPid, _Mapping]]] = ..., images_damaged: _Optional[bool] = ...) -> None: ...

class OrderFailed(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("correlation_id", "register", "heartbeat", "rank_launched", "rank_exited", "job_killed", "vote", "commit_result", "abort_result", "order_failed", "restore_result", "ready", "images_copied", "images_dropped", "images_verified")
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    RANK_LAUNCHED_FIELD_NUMBER: _ClassVar[int]
    RANK_EXITED_FIELD_NUMBER: _ClassVar[int]
    JOB_KILLED_FIELD_NUMBER: _ClassVar[int]
    VOTE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_RESULT_FIELD_NUMBER: _ClassVar[int]
    ABORT_RESULT_FIELD_NUMBER: _ClassVar[int]
    ORDER_FAILED_FIELD_NUMBER: _ClassVar[int]
    RESTORE_RESULT_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    IMAGES_COPIED_FIELD_NUMBER: _ClassVar[int]
    IMAGES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    IMAGES_VERIFIED_FIELD_NUMBER: _ClassVar[int]
    correlation_id: str
    register: Register
    heartbeat: Heartbeat
    rank_launched: RankLaunched
    rank_exited: RankExited
    job_killed: JobKilled
    vote: CheckpointVote
    commit_result: CommitResult
    abort_result: AbortResult
    order_failed: OrderFailed
    restore_result: RestoreResult
    ready: CheckpointReady
    images_copied: ImagesCopied
    images_dropped: ImagesDropped
    images_verified: ImagesVerified
    def __init__(self, correlation_id: _Optional[str] = ..., register: _Optional[_Union[Register, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., rank_launched: _Optional[_Union[RankLaunched, _Mapping]] = ..., rank_exited: _Optional[_Union[RankExited, _Mapping]] = ..., job_killed: _Optional[_Union[JobKilled, _Mapping]] = ..., vote: _Optional[_Union[CheckpointVote, _Mapping]] = ..., commit_result: _Optional[_Union[CommitResult, _Mapping]] = ..., abort_result: _Optional[_Union[AbortResult, _Mapping]] = ..., order_failed: _Optional[_Union[OrderFailed, _Mapping]] = ..., restore_result: _Optional[_Union[RestoreResult, _Mapping]] = ..., ready: _Optional[_Union[CheckpointReady, _Mapping]] = ..., images_copied: _Optional[_Union[ImagesCopied, _Mapping]] = ..., images_dropped: _Optional[_Union[ImagesDropped, _Mapping]] = ..., images_verified: _Optional[_Union[ImagesVerified, _Mapping]] = ...) -> None: ...

class CoordinatorMessage(_message.Message):
    __slots__ = ("correlation_id", "register_ack", "heartbeat_ack", "launch_rank", "kill_job", "prepare", "commit", "abort", "prepare_restore", "restore_step", "freeze", "copy_images", "drop_images", "verify_images")
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    REGISTER_ACK_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_ACK_FIELD_NUMBER: _ClassVar[int]
    LAUNCH_RANK_FIELD_NUMBER: _ClassVar[int]
    KILL_JOB_FIELD_NUMBER: _ClassVar[int]
    PREPARE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    PREPARE_RESTORE_FIELD_NUMBER: _ClassVar[int]
    RESTORE_STEP_FIELD_NUMBER: _ClassVar[int]
    FREEZE_FIELD_NUMBER: _ClassVar[int]
    COPY_IMAGES_FIELD_NUMBER: _ClassVar[int]
    DROP_IMAGES_FIELD_NUMBER: _ClassVar[int]
    VERIFY_IMAGES_FIELD_NUMBER: _ClassVar[int]
    correlation_id: str
    register_ack: RegisterAck
    heartbeat_ack: HeartbeatAck
    launch_rank: LaunchRank
    kill_job: KillJob
    prepare: PrepareCheckpoint
    commit: CommitCheckpoint
    abort: AbortCheckpoint
    prepare_restore: PrepareRestore
    restore_step: RestoreStep
    freeze: FreezeCheckpoint
    copy_images: CopyImages
    drop_images: DropImages
    verify_images: VerifyImages
    def __init__(self, correlation_id: _Optional[str] = ..., register_ack: _Optional[_Union[RegisterAck, _Mapping]] = ..., heartbeat_ack: _Optional[_Union[HeartbeatAck, _Mapping]] = ..., launch_rank: _Optional[_Union[LaunchRank, _Mapping]] = ..., kill_job: _Optional[_Union[KillJob, _Mapping]] = ..., prepare: _Optional[_Union[PrepareCheckpoint, _Mapping]] = ..., commit: _Optional[_Union[CommitCheckpoint, _Mapping]] = ..., abort: _Optional[_Union[AbortCheckpoint, _Mapping]] = ..., prepare_restore: _Optional[_Union[PrepareRestore, _Mapping]] = ..., restore_step: _Optional[_Union[RestoreStep, _Mapping]] = ..., freeze: _Optional[_Union[FreezeCheckpoint, _Mapping]] = ..., copy_images: _Optional[_Union[CopyImages, _Mapping]] = ..., drop_images: _Optional[_Union[DropImages, _Mapping]] = ..., verify_images: _Optional[_Union[VerifyImages, _Mapping]] = ...) -> None: ...
