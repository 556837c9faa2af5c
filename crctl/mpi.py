"""MPI jobs under crctl: how `crctl mpirun` starts MPICH so that every process of the MPI job is
a crctl rank on its host (pure: commands, environment, the launcher's output).

MPICH's launcher (hydra's ``mpiexec``) runs as crctl rank 0 on the first host with
``-launcher manual``: instead of starting its per-host proxies itself (over ssh), it prints
one command per host, in ``-hosts`` order::

    HYDRA_LAUNCH: /path/hydra_pmi_proxy --control-port 198.18.0.11:40811 ... --proxy-id 0
    HYDRA_LAUNCH: /path/hydra_pmi_proxy --control-port 198.18.0.11:40811 ... --proxy-id 1
    HYDRA_LAUNCH_END

and waits for the proxies to connect to that control port. ``crctl mpi-launch`` (the command of
rank 0, see cli/mpi_commands.py) reads those lines and has the coordinator start each proxy as
a rank of the job on its host; each proxy then starts that host's MPI ranks as its children.
So every process is in a crctl rank's process tree, and every connection between the trees is
TCP between hosts of the job: the launcher's control connections and the ranks' own. The ranks
are forced onto TCP (libfabric's tcp provider, no shared-memory transport between ranks:
``MPIR_CVAR_NOLOCAL``), since ranks that shared a host may not after a restart elsewhere."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from crctl.errors import ConfigError

LAUNCH_PREFIX = "HYDRA_LAUNCH: "
LAUNCH_END = "HYDRA_LAUNCH_END"

# MPICH over TCP only: the ch4 device's libfabric netmod with its tcp provider, and the netmod
# also between ranks on one host (no shared-memory transport).
TCP_ONLY = {
    "MPIR_CVAR_CH4_NETMOD": "ofi",
    "FI_PROVIDER": "tcp",
    "MPIR_CVAR_NOLOCAL": "1",
}
SUPPORTED = ("mpich",)
REFUSED = {
    "openmpi": (
        "Open MPI is not supported yet: its daemons (prted) need a host name of their own per "
        "host (every emulated host shares this machine's), and their session directories in "
        "/tmp (unix sockets, mapped files) would have to move with a checkpoint; use --mpi mpich"
    ),
}


@dataclass(frozen=True)
class Host:
    name: str  # the crctl host
    address: str  # the address MPI uses there


@dataclass(frozen=True)
class Proxy:
    proxy_id: int
    argv: tuple[str, ...]


def rank_count(hosts: Sequence[Host], ranks_per_host: int, n: int | None) -> int:
    if ranks_per_host < 1:
        raise ConfigError("--ranks-per-host must be at least 1")
    if n is not None and n < 1:
        raise ConfigError("-n must be at least 1")
    return n if n is not None else len(hosts) * ranks_per_host


def mpiexec_argv(
    mpiexec: str,
    hosts: Sequence[Host],
    *,
    ranks: int,
    ranks_per_host: int,
    command: Sequence[str],
) -> list[str]:
    """The launcher's command: the hosts by address (so the proxies reach its control port
    there, with no name resolution), ``ranks_per_host`` slots each, the proxies left to us."""
    if not hosts:
        raise ConfigError("no hosts: give --hosts h1,h2,...")
    if not command:
        raise ConfigError("give the MPI program after --, e.g. crctl mpirun ... -- python app.py")
    names = [h.name for h in hosts]
    if len(set(names)) != len(names):
        raise ConfigError(f"a host is listed twice in --hosts: {','.join(names)}")
    slots = ",".join(f"{h.address}:{ranks_per_host}" for h in hosts)
    return [mpiexec, "-launcher", "manual", "-hosts", slots, "-n", str(ranks), *command]


def mpi_environment(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """The job's environment: the caller's, the forced TCP transport, then ``--env`` (which may
    not turn the transport back to shared memory)."""
    env = {**base, **TCP_ONLY, **extra}
    for name, value in TCP_ONLY.items():
        if env[name] != value:
            raise ConfigError(
                f"{name}={env[name]} is refused: crctl runs MPI over TCP only ({name}={value}), "
                "since ranks that share a host now may not after a restart"
            )
    return env


def parse_launch_line(line: str) -> Proxy | None:
    """A proxy command from one line of ``mpiexec -launcher manual``, else None."""
    if not line.startswith(LAUNCH_PREFIX):
        return None
    argv = tuple(shlex.split(line[len(LAUNCH_PREFIX) :]))
    if "--proxy-id" not in argv:
        raise ConfigError(f"mpiexec printed a launch line with no --proxy-id: {line.strip()}")
    index = argv.index("--proxy-id")
    try:
        proxy_id = int(argv[index + 1])
    except (IndexError, ValueError):
        raise ConfigError(f"bad --proxy-id in mpiexec's launch line: {line.strip()}") from None
    return Proxy(proxy_id=proxy_id, argv=argv)


def proxy_host(proxy: Proxy, hosts: Sequence[Host]) -> Host:
    """Proxy i serves the i-th host of ``-hosts``."""
    if not 0 <= proxy.proxy_id < len(hosts):
        raise ConfigError(f"mpiexec asked for proxy {proxy.proxy_id}, but only {len(hosts)} hosts")
    return hosts[proxy.proxy_id]


def parse_hosts(spec: str) -> list[Host]:
    """``name=address,name=address`` (what mpi-launch is given) as hosts."""
    hosts = []
    for item in spec.split(","):
        name, sep, address = item.partition("=")
        if not sep or not name or not address:
            raise ConfigError(f"bad host {item!r}: expected NAME=ADDRESS")
        hosts.append(Host(name, address))
    return hosts


def format_hosts(hosts: Sequence[Host]) -> str:
    return ",".join(f"{h.name}={h.address}" for h in hosts)
