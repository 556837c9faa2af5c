import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from crctl.v1 import control_pb2 as _control_pb2
from google.longrunning import operations_pb2 as _operations_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_STATE_UNSPECIFIED: _ClassVar[AgentState]
    AGENT_STATE_ALIVE: _ClassVar[AgentState]
    AGENT_STATE_LOST: _ClassVar[AgentState]

class FileProblemKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FILE_PROBLEM_KIND_UNSPECIFIED: _ClassVar[FileProblemKind]
    FILE_PROBLEM_KIND_MISSING: _ClassVar[FileProblemKind]
    FILE_PROBLEM_KIND_SIZE: _ClassVar[FileProblemKind]
    FILE_PROBLEM_KIND_DIGEST: _ClassVar[FileProblemKind]
    FILE_PROBLEM_KIND_UNREACHABLE: _ClassVar[FileProblemKind]
    FILE_PROBLEM_KIND_COPY: _ClassVar[FileProblemKind]
AGENT_STATE_UNSPECIFIED: AgentState
AGENT_STATE_ALIVE: AgentState
AGENT_STATE_LOST: AgentState
FILE_PROBLEM_KIND_UNSPECIFIED: FileProblemKind
FILE_PROBLEM_KIND_MISSING: FileProblemKind
FILE_PROBLEM_KIND_SIZE: FileProblemKind
FILE_PROBLEM_KIND_DIGEST: FileProblemKind
FILE_PROBLEM_KIND_UNREACHABLE: FileProblemKind
FILE_PROBLEM_KIND_COPY: FileProblemKind

class Agent(_message.Message):
    __slots__ = ("host", "addresses", "state", "last_heartbeat", "registered_at", "criu_version", "capabilities", "pid")
    HOST_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    CRIU_VERSION_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    host: str
    addresses: _containers.RepeatedScalarFieldContainer[str]
    state: AgentState
    last_heartbeat: _timestamp_pb2.Timestamp
    registered_at: _timestamp_pb2.Timestamp
    criu_version: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    pid: int
    def __init__(self, host: _Optional[str] = ..., addresses: _Optional[_Iterable[str]] = ..., state: _Optional[_Union[AgentState, str]] = ..., last_heartbeat: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., registered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., criu_version: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., pid: _Optional[int] = ...) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents",)
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[Agent]
    def __init__(self, agents: _Optional[_Iterable[_Union[Agent, _Mapping]]] = ...) -> None: ...

class LaunchRequest(_message.Message):
    __slots__ = ("job", "host", "rank", "argv", "env", "cwd", "umask", "request_id")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    ARGV_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    UMASK_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    job: str
    host: str
    rank: int
    argv: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    cwd: str
    umask: int
    request_id: str
    def __init__(self, job: _Optional[str] = ..., host: _Optional[str] = ..., rank: _Optional[int] = ..., argv: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., cwd: _Optional[str] = ..., umask: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class LaunchResponse(_message.Message):
    __slots__ = ("job", "rank", "host", "pid")
    JOB_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    job: str
    rank: int
    host: str
    pid: int
    def __init__(self, job: _Optional[str] = ..., rank: _Optional[int] = ..., host: _Optional[str] = ..., pid: _Optional[int] = ...) -> None: ...

class Rank(_message.Message):
    __slots__ = ("rank", "host", "pid", "state", "exit_status", "argv")
    RANK_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXIT_STATUS_FIELD_NUMBER: _ClassVar[int]
    ARGV_FIELD_NUMBER: _ClassVar[int]
    rank: int
    host: str
    pid: int
    state: str
    exit_status: int
    argv: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, rank: _Optional[int] = ..., host: _Optional[str] = ..., pid: _Optional[int] = ..., state: _Optional[str] = ..., exit_status: _Optional[int] = ..., argv: _Optional[_Iterable[str]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job", "state", "ranks", "latest_checkpoint", "created_at", "awaiting_decision", "owner_uid", "owner", "schedule")
    JOB_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    LATEST_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    AWAITING_DECISION_FIELD_NUMBER: _ClassVar[int]
    OWNER_UID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    job: str
    state: str
    ranks: _containers.RepeatedCompositeFieldContainer[Rank]
    latest_checkpoint: str
    created_at: _timestamp_pb2.Timestamp
    awaiting_decision: _containers.RepeatedCompositeFieldContainer[AwaitedDecision]
    owner_uid: int
    owner: str
    schedule: Schedule
    def __init__(self, job: _Optional[str] = ..., state: _Optional[str] = ..., ranks: _Optional[_Iterable[_Union[Rank, _Mapping]]] = ..., latest_checkpoint: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., awaiting_decision: _Optional[_Iterable[_Union[AwaitedDecision, _Mapping]]] = ..., owner_uid: _Optional[int] = ..., owner: _Optional[str] = ..., schedule: _Optional[_Union[Schedule, _Mapping]] = ...) -> None: ...

class AwaitedDecision(_message.Message):
    __slots__ = ("checkpoint", "host", "decision")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    host: str
    decision: str
    def __init__(self, checkpoint: _Optional[str] = ..., host: _Optional[str] = ..., decision: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: str
    def __init__(self, job: _Optional[str] = ...) -> None: ...

class KillJobRequest(_message.Message):
    __slots__ = ("job", "request_id")
    JOB_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    job: str
    request_id: str
    def __init__(self, job: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class KillJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class CheckpointRequest(_message.Message):
    __slots__ = ("job", "leave_running", "timeout_seconds", "request_id", "external")
    JOB_FIELD_NUMBER: _ClassVar[int]
    LEAVE_RUNNING_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_FIELD_NUMBER: _ClassVar[int]
    job: str
    leave_running: bool
    timeout_seconds: float
    request_id: str
    external: str
    def __init__(self, job: _Optional[str] = ..., leave_running: _Optional[bool] = ..., timeout_seconds: _Optional[float] = ..., request_id: _Optional[str] = ..., external: _Optional[str] = ...) -> None: ...

class CheckpointEvent(_message.Message):
    __slots__ = ("phase", "vote", "outcome")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    VOTE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    phase: PhaseChanged
    vote: HostVoted
    outcome: CheckpointOutcome
    def __init__(self, phase: _Optional[_Union[PhaseChanged, _Mapping]] = ..., vote: _Optional[_Union[HostVoted, _Mapping]] = ..., outcome: _Optional[_Union[CheckpointOutcome, _Mapping]] = ...) -> None: ...

class PhaseChanged(_message.Message):
    __slots__ = ("checkpoint", "phase", "hosts")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    phase: str
    hosts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, checkpoint: _Optional[str] = ..., phase: _Optional[str] = ..., hosts: _Optional[_Iterable[str]] = ...) -> None: ...

class HostVoted(_message.Message):
    __slots__ = ("checkpoint", "host", "yes", "reason")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    YES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    host: str
    yes: bool
    reason: str
    def __init__(self, checkpoint: _Optional[str] = ..., host: _Optional[str] = ..., yes: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class CheckpointOutcome(_message.Message):
    __slots__ = ("checkpoint", "committed", "reason", "failed_host", "duration_seconds", "ranks", "frozen_seconds")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FAILED_HOST_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    FROZEN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    committed: bool
    reason: str
    failed_host: str
    duration_seconds: float
    ranks: _containers.RepeatedCompositeFieldContainer[_control_pb2.RankImage]
    frozen_seconds: float
    def __init__(self, checkpoint: _Optional[str] = ..., committed: _Optional[bool] = ..., reason: _Optional[str] = ..., failed_host: _Optional[str] = ..., duration_seconds: _Optional[float] = ..., ranks: _Optional[_Iterable[_Union[_control_pb2.RankImage, _Mapping]]] = ..., frozen_seconds: _Optional[float] = ...) -> None: ...

class Manifest(_message.Message):
    __slots__ = ("checkpoint", "job", "created_at", "leave_running", "ranks")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LEAVE_RUNNING_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    job: str
    created_at: _timestamp_pb2.Timestamp
    leave_running: bool
    ranks: _containers.RepeatedCompositeFieldContainer[_control_pb2.RankImage]
    def __init__(self, checkpoint: _Optional[str] = ..., job: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., leave_running: _Optional[bool] = ..., ranks: _Optional[_Iterable[_Union[_control_pb2.RankImage, _Mapping]]] = ...) -> None: ...

class CheckpointInfo(_message.Message):
    __slots__ = ("checkpoint", "job", "state", "latest", "started_at", "finished_at", "reason", "directory", "manifest", "pinned", "unreachable")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    UNREACHABLE_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    job: str
    state: str
    latest: bool
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    reason: str
    directory: str
    manifest: Manifest
    pinned: bool
    unreachable: str
    def __init__(self, checkpoint: _Optional[str] = ..., job: _Optional[str] = ..., state: _Optional[str] = ..., latest: _Optional[bool] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., directory: _Optional[str] = ..., manifest: _Optional[_Union[Manifest, _Mapping]] = ..., pinned: _Optional[bool] = ..., unreachable: _Optional[str] = ...) -> None: ...

class ListCheckpointsRequest(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: str
    def __init__(self, job: _Optional[str] = ...) -> None: ...

class ListCheckpointsResponse(_message.Message):
    __slots__ = ("checkpoints",)
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[CheckpointInfo]
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[CheckpointInfo, _Mapping]]] = ...) -> None: ...

class VerifyCheckpointRequest(_message.Message):
    __slots__ = ("job", "checkpoint")
    JOB_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    job: str
    checkpoint: str
    def __init__(self, job: _Optional[str] = ..., checkpoint: _Optional[str] = ...) -> None: ...

class FileProblem(_message.Message):
    __slots__ = ("path", "kind", "detail")
    PATH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    path: str
    kind: FileProblemKind
    detail: str
    def __init__(self, path: _Optional[str] = ..., kind: _Optional[_Union[FileProblemKind, str]] = ..., detail: _Optional[str] = ...) -> None: ...

class VerifyCheckpointResponse(_message.Message):
    __slots__ = ("job", "checkpoint", "directory", "ok", "files", "bytes", "problems", "duration_seconds")
    JOB_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    job: str
    checkpoint: str
    directory: str
    ok: bool
    files: int
    bytes: int
    problems: _containers.RepeatedCompositeFieldContainer[FileProblem]
    duration_seconds: float
    def __init__(self, job: _Optional[str] = ..., checkpoint: _Optional[str] = ..., directory: _Optional[str] = ..., ok: _Optional[bool] = ..., files: _Optional[int] = ..., bytes: _Optional[int] = ..., problems: _Optional[_Iterable[_Union[FileProblem, _Mapping]]] = ..., duration_seconds: _Optional[float] = ...) -> None: ...

class RestartRequest(_message.Message):
    __slots__ = ("job", "checkpoint", "host_map", "hosts", "plugins", "plugin_options", "timeout_seconds", "eager_pages", "request_id")
    class HostMapEntry(_message.Message):
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
    JOB_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    HOST_MAP_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    PLUGINS_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EAGER_PAGES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    job: str
    checkpoint: str
    host_map: _containers.ScalarMap[str, str]
    hosts: _containers.RepeatedScalarFieldContainer[str]
    plugins: _containers.RepeatedScalarFieldContainer[str]
    plugin_options: _containers.ScalarMap[str, str]
    timeout_seconds: float
    eager_pages: bool
    request_id: str
    def __init__(self, job: _Optional[str] = ..., checkpoint: _Optional[str] = ..., host_map: _Optional[_Mapping[str, str]] = ..., hosts: _Optional[_Iterable[str]] = ..., plugins: _Optional[_Iterable[str]] = ..., plugin_options: _Optional[_Mapping[str, str]] = ..., timeout_seconds: _Optional[float] = ..., eager_pages: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class RestartEvent(_message.Message):
    __slots__ = ("step", "outcome")
    STEP_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    step: RestartStep
    outcome: RestartOutcome
    def __init__(self, step: _Optional[_Union[RestartStep, _Mapping]] = ..., outcome: _Optional[_Union[RestartOutcome, _Mapping]] = ...) -> None: ...

class RestartStep(_message.Message):
    __slots__ = ("restore", "step", "hosts")
    RESTORE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    restore: str
    step: str
    hosts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, restore: _Optional[str] = ..., step: _Optional[str] = ..., hosts: _Optional[_Iterable[str]] = ...) -> None: ...

class RestartOutcome(_message.Message):
    __slots__ = ("restore", "checkpoint", "restarted", "reason", "failed_host", "failed_rank", "duration_seconds", "ranks", "address_map", "split_hosts", "passed_over", "checkpoint_damaged")
    class AddressMapEntry(_message.Message):
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
    RESTORE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    RESTARTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FAILED_HOST_FIELD_NUMBER: _ClassVar[int]
    FAILED_RANK_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_MAP_FIELD_NUMBER: _ClassVar[int]
    SPLIT_HOSTS_FIELD_NUMBER: _ClassVar[int]
    PASSED_OVER_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_DAMAGED_FIELD_NUMBER: _ClassVar[int]
    restore: str
    checkpoint: str
    restarted: bool
    reason: str
    failed_host: str
    failed_rank: int
    duration_seconds: float
    ranks: _containers.RepeatedCompositeFieldContainer[Rank]
    address_map: _containers.ScalarMap[str, str]
    split_hosts: _containers.ScalarMap[str, str]
    passed_over: _containers.RepeatedCompositeFieldContainer[PassedOver]
    checkpoint_damaged: bool
    def __init__(self, restore: _Optional[str] = ..., checkpoint: _Optional[str] = ..., restarted: _Optional[bool] = ..., reason: _Optional[str] = ..., failed_host: _Optional[str] = ..., failed_rank: _Optional[int] = ..., duration_seconds: _Optional[float] = ..., ranks: _Optional[_Iterable[_Union[Rank, _Mapping]]] = ..., address_map: _Optional[_Mapping[str, str]] = ..., split_hosts: _Optional[_Mapping[str, str]] = ..., passed_over: _Optional[_Iterable[_Union[PassedOver, _Mapping]]] = ..., checkpoint_damaged: _Optional[bool] = ...) -> None: ...

class PassedOver(_message.Message):
    __slots__ = ("checkpoint", "reason")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    reason: str
    def __init__(self, checkpoint: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class HostProgress(_message.Message):
    __slots__ = ("host", "state", "reason")
    HOST_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    host: str
    state: str
    reason: str
    def __init__(self, host: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CheckpointMetadata(_message.Message):
    __slots__ = ("job", "checkpoint", "phase", "hosts", "started_at", "updated_at", "leave_running", "requested_by", "cancel_requested")
    JOB_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    LEAVE_RUNNING_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    job: str
    checkpoint: str
    phase: str
    hosts: _containers.RepeatedCompositeFieldContainer[HostProgress]
    started_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    leave_running: bool
    requested_by: str
    cancel_requested: bool
    def __init__(self, job: _Optional[str] = ..., checkpoint: _Optional[str] = ..., phase: _Optional[str] = ..., hosts: _Optional[_Iterable[_Union[HostProgress, _Mapping]]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., leave_running: _Optional[bool] = ..., requested_by: _Optional[str] = ..., cancel_requested: _Optional[bool] = ...) -> None: ...

class RestartMetadata(_message.Message):
    __slots__ = ("job", "restore", "checkpoint", "step", "hosts", "started_at", "updated_at", "requested_by", "cancel_requested")
    JOB_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    job: str
    restore: str
    checkpoint: str
    step: str
    hosts: _containers.RepeatedCompositeFieldContainer[HostProgress]
    started_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    requested_by: str
    cancel_requested: bool
    def __init__(self, job: _Optional[str] = ..., restore: _Optional[str] = ..., checkpoint: _Optional[str] = ..., step: _Optional[str] = ..., hosts: _Optional[_Iterable[_Union[HostProgress, _Mapping]]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., requested_by: _Optional[str] = ..., cancel_requested: _Optional[bool] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: str
    def __init__(self, job: _Optional[str] = ...) -> None: ...

class RankChanged(_message.Message):
    __slots__ = ("rank", "host", "pid", "state", "exit_status", "reason")
    RANK_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXIT_STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    rank: int
    host: str
    pid: int
    state: str
    exit_status: int
    reason: str
    def __init__(self, rank: _Optional[int] = ..., host: _Optional[str] = ..., pid: _Optional[int] = ..., state: _Optional[str] = ..., exit_status: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class ScheduleSkipped(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("time", "job", "operation", "snapshot", "rank", "checkpoint_phase", "checkpoint_vote", "checkpoint_outcome", "restart_step", "restart_outcome", "schedule", "schedule_skipped")
    TIME_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_PHASE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_VOTE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    RESTART_STEP_FIELD_NUMBER: _ClassVar[int]
    RESTART_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    job: str
    operation: str
    snapshot: Job
    rank: RankChanged
    checkpoint_phase: PhaseChanged
    checkpoint_vote: HostVoted
    checkpoint_outcome: CheckpointOutcome
    restart_step: RestartStep
    restart_outcome: RestartOutcome
    schedule: Schedule
    schedule_skipped: ScheduleSkipped
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., job: _Optional[str] = ..., operation: _Optional[str] = ..., snapshot: _Optional[_Union[Job, _Mapping]] = ..., rank: _Optional[_Union[RankChanged, _Mapping]] = ..., checkpoint_phase: _Optional[_Union[PhaseChanged, _Mapping]] = ..., checkpoint_vote: _Optional[_Union[HostVoted, _Mapping]] = ..., checkpoint_outcome: _Optional[_Union[CheckpointOutcome, _Mapping]] = ..., restart_step: _Optional[_Union[RestartStep, _Mapping]] = ..., restart_outcome: _Optional[_Union[RestartOutcome, _Mapping]] = ..., schedule: _Optional[_Union[Schedule, _Mapping]] = ..., schedule_skipped: _Optional[_Union[ScheduleSkipped, _Mapping]] = ...) -> None: ...

class Schedule(_message.Message):
    __slots__ = ("job", "every_seconds", "keep", "stop", "next_at", "last_at", "last_checkpoint", "last_outcome")
    JOB_FIELD_NUMBER: _ClassVar[int]
    EVERY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    KEEP_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    NEXT_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    LAST_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    job: str
    every_seconds: float
    keep: int
    stop: bool
    next_at: _timestamp_pb2.Timestamp
    last_at: _timestamp_pb2.Timestamp
    last_checkpoint: str
    last_outcome: str
    def __init__(self, job: _Optional[str] = ..., every_seconds: _Optional[float] = ..., keep: _Optional[int] = ..., stop: _Optional[bool] = ..., next_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_checkpoint: _Optional[str] = ..., last_outcome: _Optional[str] = ...) -> None: ...

class SetScheduleRequest(_message.Message):
    __slots__ = ("job", "every_seconds", "keep", "stop", "request_id")
    JOB_FIELD_NUMBER: _ClassVar[int]
    EVERY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    KEEP_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    job: str
    every_seconds: float
    keep: int
    stop: bool
    request_id: str
    def __init__(self, job: _Optional[str] = ..., every_seconds: _Optional[float] = ..., keep: _Optional[int] = ..., stop: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class PinCheckpointRequest(_message.Message):
    __slots__ = ("job", "checkpoint", "pinned")
    JOB_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    job: str
    checkpoint: str
    pinned: bool
    def __init__(self, job: _Optional[str] = ..., checkpoint: _Optional[str] = ..., pinned: _Optional[bool] = ...) -> None: ...
