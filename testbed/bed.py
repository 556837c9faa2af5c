"""`crctl testbed up|status|start|down`: emulated hosts h1..hN with a coordinator and agents.

Everything the testbed makes is recorded in ``<dir>/testbed.json`` and named with the
``crctl-`` prefix, so ``down`` can remove it all, also after a crash or when run twice."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cli.client import CoordinatorClient
from crctl import failpoints, keys
from crctl.errors import CrctlError, PrerequisiteError, UnavailableError
from crctl.fs import remove_tree
from crctl.v1 import coordinator_pb2
from testbed import DEFAULT_DIR as DEFAULT_DIR  # re-exported: callers name bed.DEFAULT_DIR
from testbed import netns, procs, slurm

PREFIX = "crctl"
BRIDGE = f"{PREFIX}-br0"
# The coordinator serves the default api_socket, so a plain `crctl` of any user reaches it.
API_SOCKET = Path("/run/crctl/api.sock")
CONTROL_PORT = 50052
COORDINATOR = "coordinator"


@dataclass
class Host:
    name: str
    namespace: str
    veth: str
    address: str


@dataclass
class State:
    directory: str
    api_address: str
    control_endpoint: str
    heartbeat_interval: float
    agent_lost_after: float
    commit_timeout: float = 10.0
    plugin_dir: str = ""  # the agents' plugin_dir ("": <testbed dir>/plugins, empty)
    slurm: bool = False  # real Slurm on the hosts (testbed.slurm)
    # Each host has its own /tmp, /dev/shm, agent work directory and checkpoint store (mount
    # namespaces, see private_folders); the rest of the file system is shared, as home
    # directories on NFS would be.
    private_storage: bool = False
    replicas: int = 0  # the coordinator's: partner copies of each host's images
    image_retry_after: float = 3.0  # the coordinator's: a failed copy or drop tried again
    hosts: dict[str, Host] = field(default_factory=dict)
    processes: dict[str, procs.ProcessRef] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return Path(self.directory)

    def save(self) -> None:
        path = self.dir / "testbed.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, directory: Path) -> State | None:
        path = directory / "testbed.json"
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        raw["hosts"] = {k: Host(**v) for k, v in raw["hosts"].items()}
        raw["processes"] = {k: procs.ProcessRef(**v) for k, v in raw["processes"].items()}
        return cls(**raw)


PRIVATE_TARGETS = ("tmp", "dev/shm")


DISK = "disk"  # with private storage: the path of each host's own disk, in the testbed dir


def private_folders(state: State, host: str) -> dict[Path, Path]:
    """With private storage: what host ``host`` sees at a path -> the folder of its own behind
    it (under <testbed>/nodes/<host>/, so that tests can look at a host's disk, or remove it).
    Its agent work dir and checkpoint store are on one "disk" (one mount: hard links between
    them work, as on a node whose /var/lib/crctl is one file system)."""
    own = state.dir / "nodes" / host
    return {
        Path("/tmp"): own / "tmp",
        Path("/dev/shm"): own / "shm",
        state.dir / DISK: own / DISK,
    }


def checkpoint_dir(state: State) -> Path:
    """The checkpoint_dir of the coordinator and of every agent (each host's own store with
    private storage, the coordinator's holding the manifests only)."""
    return state.dir / DISK / "checkpoints" if state.private_storage else state.dir / "checkpoints"


def work_dir(state: State, host: str) -> Path:
    """Host ``host``'s agent work dir, as that host sees it."""
    return state.dir / DISK / "agent" if state.private_storage else state.dir / "agents" / host


def seen_from_root(state: State, host: str, path: Path) -> Path:
    """Where the root namespace (tests, operators) finds what host ``host`` has at ``path``:
    the host's own folder behind it with private storage (its /tmp, /dev/shm, disk)."""
    if state.private_storage:
        for target, source in private_folders(state, host).items():
            if path.is_relative_to(target):
                return source / path.relative_to(target)
    return path


def host_store(state: State, host: str) -> Path:
    """Host ``host``'s checkpoint store, as the root namespace sees it (its own with private
    storage, else the one every host shares)."""
    return seen_from_root(state, host, checkpoint_dir(state))


def host_work_dir(state: State, host: str) -> Path:
    """Host ``host``'s agent work dir, as the root namespace sees it."""
    return seen_from_root(state, host, work_dir(state, host))


def _make_private_storage(state: State, host: Host) -> None:
    folders = private_folders(state, host.name)
    for target, source in folders.items():
        target.mkdir(parents=True, exist_ok=True)
        source.mkdir(parents=True, exist_ok=True)
        if target in (Path("/tmp"), Path("/dev/shm")):
            source.chmod(0o1777)
    # What the daemons run from stays shared, wherever it is (a checkout in /tmp, say).
    keep = {_project_root().resolve(), Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    keep |= {Path(p).resolve() for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    netns.create_private_storage(host.namespace, folders, sorted(keep))


def agent_process(host: str) -> str:
    return f"agent-{host}"


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _crctl() -> list[str]:
    return [sys.executable, "-m", "cli"]


def _daemon_argv(state: State, name: str) -> list[str]:
    common = [
        "--keys-dir",
        str(state.dir / "keys"),
        "--control-endpoint",
        state.control_endpoint,
        "--heartbeat-interval",
        str(state.heartbeat_interval),
        "--log-format",
        "json",
    ]
    if name == COORDINATOR:
        return [
            *_crctl(),
            "coordinator",
            *common,
            "--api-socket",
            state.api_address.removeprefix("unix:"),
            "--state-db",
            str(state.dir / "coordinator.db"),
            "--checkpoint-dir",
            str(checkpoint_dir(state)),
            "--agent-lost-after",
            str(state.agent_lost_after),
            "--commit-timeout",
            str(state.commit_timeout),
            "--replicas",
            str(state.replicas),
            "--image-retry-after",
            str(state.image_retry_after),
        ]
    host = state.hosts[name.removeprefix("agent-")]
    return [
        *netns.nsenter_prefix(host.namespace),
        *_crctl(),
        "agent",
        *common,
        "--host",
        host.name,
        "--agent-work-dir",
        str(work_dir(state, host.name)),
        "--checkpoint-dir",
        str(checkpoint_dir(state)),
        # the hosts share this machine's /tmp and /dev/shm unless their storage is private
        "--host-private-paths",
        ",".join(str(p) for p in private_folders(state, host.name))
        if state.private_storage
        else "",
        "--plugin-dir",
        state.plugin_dir or str(state.dir / "plugins"),
    ]


def _log_path(state: State, name: str) -> Path:
    return state.dir / "logs" / f"{name}.log"


def failpoints_file(state: State, name: str) -> Path:
    """Where daemon ``name`` ("coordinator", "agent-hN") reads its failpoints."""
    return state.dir / "failpoints" / name


def start(state: State, name: str) -> procs.ProcessRef:
    """Start a testbed daemon ("coordinator" or "agent-hN") unless it is already running."""
    current = state.processes.get(name)
    if current is not None and procs.is_running(current):
        return current
    if name != COORDINATOR and name.removeprefix("agent-") not in state.hosts:
        raise CrctlError(f"no such testbed daemon {name!r}")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(_project_root()), env.get("PYTHONPATH", "")])
    )
    # Each daemon reads its failpoints (crctl.failpoints) from a file of its own: a fault test
    # arms one by writing it, e.g. "agent.checkpoint.held=kill".
    env[failpoints.ENV] = str(failpoints_file(state, name))
    ref = procs.spawn(_daemon_argv(state, name), _log_path(state, name), env=env)
    state.processes[name] = ref
    state.save()
    return ref


def _project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def _socket_live(path: Path) -> bool:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def wait_for_agents(
    state: State, expected: list[str], timeout: float
) -> list[coordinator_pb2.Agent]:
    deadline = time.monotonic() + timeout
    last_error = ""
    with CoordinatorClient(state.api_address, timeout=2.0) as client:
        while time.monotonic() < deadline:
            try:
                agents = client.list_agents()
                alive = {a.host for a in agents if a.state == coordinator_pb2.AGENT_STATE_ALIVE}
                if set(expected) <= alive:
                    return agents
                last_error = f"alive so far: {sorted(alive) or 'none'}"
            except UnavailableError as exc:
                last_error = str(exc)
            time.sleep(0.2)
    raise UnavailableError(
        f"agents {expected} did not all register within {timeout:.0f}s ({last_error}); "
        f"see the logs in {state.dir / 'logs'}"
    )


def up(
    hosts: int,
    directory: Path = DEFAULT_DIR,
    *,
    heartbeat_interval: float = 0.5,
    agent_lost_after: float = 3.0,
    commit_timeout: float = 10.0,
    plugin_dir: Path | None = None,
    with_slurm: bool = False,
    private_storage: bool = False,
    replicas: int = 0,
    timeout: float = 60.0,
) -> State:
    if os.geteuid() != 0:
        raise PrerequisiteError("the testbed needs root (network namespaces, bridge, CRIU)")
    if not 1 <= hosts <= netns.MAX_HOSTS:
        raise CrctlError(f"--hosts must be between 1 and {netns.MAX_HOSTS}")
    with _locked(directory):
        if State.load(directory) is not None or netns.namespaces_matching(rf"{PREFIX}-h\d+"):
            raise CrctlError(
                "a testbed is already up (or left over from a crash); run `crctl testbed down`"
            )
        if _socket_live(API_SOCKET):
            raise UnavailableError(f"{API_SOCKET} is served already: is a coordinator running?")
        state = State(
            directory=str(directory),
            api_address=f"unix:{API_SOCKET}",
            control_endpoint=f"tcp://{netns.BRIDGE_ADDRESS}:{CONTROL_PORT}",
            heartbeat_interval=heartbeat_interval,
            agent_lost_after=agent_lost_after,
            commit_timeout=commit_timeout,
            plugin_dir=str(plugin_dir or ""),
            slurm=with_slurm,
            private_storage=private_storage,
            replicas=replicas,
        )
        names = [f"h{i}" for i in range(1, hosts + 1)]
        keys.init_keys(directory / "keys", names)
        state.save()
        try:
            netns.create_bridge(BRIDGE)
            for index, name in enumerate(names, start=1):
                host = Host(
                    name=name,
                    namespace=f"{PREFIX}-{name}",
                    veth=f"{PREFIX}-v{index}",
                    address=str(netns.host_address(index)),
                )
                netns.create_host(host.namespace, host.veth, BRIDGE, netns.host_address(index))
                state.hosts[name] = host
                state.save()
                if private_storage:
                    _make_private_storage(state, host)
            start(state, COORDINATOR)
            for name in names:
                start(state, agent_process(name))
            wait_for_agents(state, names, timeout)
            if with_slurm:
                daemons = slurm.start(
                    state.dir / "slurm",
                    {n: h.address for n, h in state.hosts.items()},
                    {n: h.namespace for n, h in state.hosts.items()},
                )
                state.processes.update(daemons)
                state.save()
        except CrctlError as exc:
            tails = _log_tails(state)
            _teardown(directory)
            raise CrctlError(f"testbed up failed: {exc}{tails}") from None
        except BaseException:
            _teardown(directory)
            raise
        return state


def _log_tails(state: State, lines: int = 5) -> str:
    out = []
    for name in state.processes:
        path = _log_path(state, name)
        if path.exists():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"\n--- {name} log (last {lines} lines):\n" + "\n".join(tail))
    return "".join(out)


def status(directory: Path = DEFAULT_DIR) -> State | None:
    return State.load(directory)


def _teardown(directory: Path) -> list[str]:
    """Remove everything: recorded processes, every process left in our namespaces, the
    namespaces, the bridge and the state directory. Idempotent."""
    removed: list[str] = []
    state = State.load(directory)
    if state is not None:
        for name, ref in state.processes.items():
            if procs.kill(ref):
                removed.append(f"process {name} (pid {ref.pid})")
    namespaces = set(netns.namespaces_matching(rf"{PREFIX}-h\d+"))
    if netns.MNTNS_DIR.is_dir():  # a host's mount namespace outlives a crash, too
        namespaces |= {p.name for p in netns.MNTNS_DIR.glob(f"{PREFIX}-h*")}
    if state is not None:
        namespaces |= {
            h.namespace for h in state.hosts.values() if netns.netns_path(h.namespace).exists()
        }
    _thaw_rank_cgroups()  # frozen tasks cannot die
    for namespace in sorted(namespaces):
        for pid in netns.pids_in(namespace):
            ticks = procs.start_ticks(pid)
            if ticks is not None and procs.kill(procs.ProcessRef(pid, ticks)):
                removed.append(f"process {pid} in {namespace}")
        if netns.mntns_path(namespace).exists():
            netns.delete_private_storage(namespace)
            removed.append(f"mount namespace {namespace}")
        netns.delete_namespace(namespace)
        removed.append(f"namespace {namespace}")
    removed.extend(_remove_empty_rank_cgroups())
    if slurm.remove_conf():
        removed.append(f"file {slurm.CONF}")
    for link in [BRIDGE, *(h.veth for h in (state.hosts.values() if state else []))]:
        if netns.link_exists(link):
            netns.delete_link(link)
            removed.append(f"link {link}")
    if directory.exists():
        if any(p.name != ".lock" for p in directory.iterdir()):
            removed.append(f"directory {directory}")
        remove_tree(directory)  # never through a mount CRIU left behind
    return removed


RANK_CGROUPS = Path("/sys/fs/cgroup/freezer/crctl")


def _thaw_rank_cgroups() -> None:
    for state in RANK_CGROUPS.glob("**/freezer.state"):
        with contextlib.suppress(OSError):
            if state.read_text().strip() != "THAWED":
                state.write_text("THAWED\n")


def _remove_empty_rank_cgroups() -> list[str]:
    """The ranks' freezer cgroups left empty once the testbed's processes are gone."""
    removed = []
    directories = sorted(RANK_CGROUPS.glob("**/"), key=lambda p: len(p.parts), reverse=True)
    for directory in directories:
        with contextlib.suppress(OSError):
            directory.rmdir()
            removed.append(f"cgroup {directory}")
    return removed


def down(directory: Path = DEFAULT_DIR) -> list[str]:
    if os.geteuid() != 0:
        raise PrerequisiteError("removing the testbed needs root")
    with _locked(directory):
        return _teardown(directory)


def exec_in_host(state: State, host: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a command inside an emulated host's network namespace (for tests and operators)."""
    return subprocess.run(
        [*netns.nsenter_prefix(state.hosts[host].namespace), *argv],
        capture_output=True,
        text=True,
        check=False,
    )
