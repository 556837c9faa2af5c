"""`crctl`: argument parsing and dispatch. Each command is a small function; errors become exit
codes in one place (cli.exit_codes) and a one-line message on stderr."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from cli import (
    checkpoint_commands,
    job_commands,
    key_commands,
    mpi_commands,
    operation_commands,
    render,
    restart_commands,
    run_command,
    schedule_commands,
)
from cli.arguments import between
from cli.client import CoordinatorClient
from cli.exit_codes import ExitCode, exit_code_for
from crctl.config import KEYS, Config, load_config
from crctl.errors import CrctlError
from crctl.v1 import coordinator_pb2

Command = Callable[[argparse.Namespace, Config], int]

_STATE_NAMES = {
    coordinator_pb2.AGENT_STATE_ALIVE: "alive",
    coordinator_pb2.AGENT_STATE_LOST: "lost",
    coordinator_pb2.AGENT_STATE_UNSPECIFIED: "unknown",
}


CLIENT_KEYS = (
    "api_socket",
    "api_address",
    "api_tls_ca",
    "api_tls_cert",
    "api_tls_key",
    "log_format",
    "log_level",
)


def _config_flags(keys: tuple[str, ...]) -> argparse.ArgumentParser:
    """Config keys as --flags (same names as the file and CRCTL_* variables)."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("configuration (also CRCTL_<KEY> or the --config file)")
    group.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="TOML config file (default: $CRCTL_CONFIG)",
    )
    for key in keys:
        group.add_argument(
            f"--{key.replace('_', '-')}",
            dest=f"cfg_{key}",
            default=argparse.SUPPRESS,
            metavar=key.upper(),
        )
    return parent


def _load(args: argparse.Namespace) -> Config:
    flags = {k.removeprefix("cfg_"): v for k, v in vars(args).items() if k.startswith("cfg_")}
    return load_config(file=getattr(args, "config", None), flags=flags)


# --- commands -------------------------------------------------------------------------------


# Commands import what only they need: a batch script's `crctl checkpoint` should not pay for
# ZeroMQ, structlog or the host checks at every start.


def cmd_doctor(args: argparse.Namespace, config: Config) -> int:
    from crctl.doctor import run_checks

    checks = run_checks()
    if args.json:
        render.print_json(
            [
                {
                    "check": c.name,
                    "ok": c.ok,
                    "required": c.required,
                    "detail": c.detail,
                    "fix": c.fix,
                }
                for c in checks
            ]
        )
    else:
        for check in checks:
            mark = "ok  " if check.ok else ("FAIL" if check.required else "warn")
            print(f"{mark} {check.name:<12} {check.detail}")
            if not check.ok and check.fix:
                print(f"     {'':<12} fix: {check.fix}")
    failed = [c for c in checks if c.required and not c.ok]
    return ExitCode.PREREQUISITE if failed else ExitCode.OK


def cmd_coordinator(args: argparse.Namespace, config: Config) -> int:
    from coordinator.daemon import run
    from crctl import logs

    logs.configure(
        component="coordinator", host=config.host, fmt=config.log_format, level=config.log_level
    )
    run(config)
    return ExitCode.OK


def cmd_agent(args: argparse.Namespace, config: Config) -> int:
    from agent.daemon import run
    from crctl import logs

    logs.configure(
        component="agent", host=config.host, fmt=config.log_format, level=config.log_level
    )
    run(config)
    return ExitCode.OK


def _age(seconds: float) -> str:
    return f"{max(0.0, time.time() - seconds):.1f}s ago"


def cmd_agents(args: argparse.Namespace, config: Config) -> int:
    with CoordinatorClient.for_config(config) as client:
        agents = client.list_agents()
    if args.json:
        render.print_json([{**render.to_dict(a), "state": _STATE_NAMES[a.state]} for a in agents])
        return ExitCode.OK
    render.print_table(
        ["host", "address", "state", "last heartbeat", "criu"],
        [
            [
                a.host,
                ",".join(a.addresses) or "-",
                _STATE_NAMES[a.state],
                _age(a.last_heartbeat.ToNanoseconds() / 1e9),
                a.criu_version or "-",
            ]
            for a in agents
        ],
    )
    return ExitCode.OK


def cmd_keys_init(args: argparse.Namespace, config: Config) -> int:
    from crctl import keys

    directory = args.dir or config.keys_dir
    keys.init_keys(directory, args.agent)
    print(f"keys in {directory}: coordinator + {len(args.agent)} agent(s)")
    return ExitCode.OK


def cmd_testbed_up(args: argparse.Namespace, config: Config) -> int:
    from testbed import bed, netns

    state = bed.up(
        args.hosts,
        args.dir,
        with_slurm=args.slurm,
        private_storage=args.private_storage,
        replicas=args.replicas,
    )
    print(f"testbed up: {len(state.hosts)} hosts, coordinator at {state.api_address}")
    if state.slurm:
        print("  Slurm: nodes h1..hN in partition debug (sbatch, squeue, scontrol, scancel)")
    if state.private_storage:
        print(
            "  private storage: each host has its own /tmp, /dev/shm, agent work directory and "
            f"checkpoint store (under {state.dir / 'nodes'})"
        )
    for host in state.hosts.values():
        print(f"  {host.name}  {host.address}  ({' '.join(netns.nsenter_prefix(host.namespace))})")
    return ExitCode.OK


def cmd_testbed_status(args: argparse.Namespace, config: Config) -> int:
    from testbed import bed, procs

    state = bed.status(args.dir)
    if state is None:
        if args.json:
            render.print_json({"up": False})
        else:
            print("testbed is down")
        return ExitCode.OK
    processes = {
        name: {"pid": ref.pid, "running": procs.is_running(ref)}
        for name, ref in state.processes.items()
    }
    if args.json:
        render.print_json(
            {
                "up": True,
                "directory": state.directory,
                "api_address": state.api_address,
                "control_endpoint": state.control_endpoint,
                "hosts": {
                    h.name: {"address": h.address, "namespace": h.namespace}
                    for h in state.hosts.values()
                },
                "processes": processes,
            }
        )
        return ExitCode.OK
    print(f"testbed in {state.directory}, coordinator at {state.api_address}")
    render.print_table(
        ["daemon", "pid", "running"],
        [[name, p["pid"], "yes" if p["running"] else "no"] for name, p in processes.items()],
    )
    return ExitCode.OK


def cmd_testbed_start(args: argparse.Namespace, config: Config) -> int:
    from testbed import bed

    state = bed.status(args.dir)
    if state is None:
        raise CrctlError("testbed is down; run `crctl testbed up` first")
    ref = bed.start(state, args.daemon)
    print(f"{args.daemon} running as pid {ref.pid}")
    return ExitCode.OK


def cmd_testbed_down(args: argparse.Namespace, config: Config) -> int:
    from testbed import bed

    removed = bed.down(args.dir)
    print("testbed down" + (f": removed {len(removed)} items" if removed else ": nothing to do"))
    return ExitCode.OK


def cmd_demo(args: argparse.Namespace, config: Config) -> int:
    from cli.demo import run_demo

    run_demo(args.hosts, with_mpi=args.mpi, private_storage=args.private_storage)
    return ExitCode.OK


# --- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from testbed import DEFAULT_DIR
    from testbed.netns import MAX_HOSTS

    daemon_cfg = _config_flags(KEYS)
    client_cfg = _config_flags(CLIENT_KEYS)
    parser = argparse.ArgumentParser(
        prog="crctl", description="Checkpoint and migrate distributed jobs with CRIU."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_to(
        where: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        func: Command,
        help_text: str,
        json_flag: bool = False,
        daemon: bool = False,
    ) -> argparse.ArgumentParser:
        parents = [daemon_cfg if daemon else client_cfg]
        p = where.add_parser(name, parents=parents, help=help_text, description=help_text)
        p.set_defaults(func=func)
        if json_flag:
            p.add_argument("--json", action="store_true", help="print JSON")
        return p

    def add(
        name: str, func: Command, help_text: str, json_flag: bool = False
    ) -> argparse.ArgumentParser:
        return add_to(sub, name, func, help_text, json_flag)

    add("doctor", cmd_doctor, "check that this host can checkpoint and restore", True)
    add_to(sub, "coordinator", cmd_coordinator, "run the coordinator daemon", daemon=True)
    add_to(sub, "agent", cmd_agent, "run the per-host agent daemon", daemon=True)
    add("agents", cmd_agents, "list agents known to the coordinator", True)
    job_commands.register(add)
    checkpoint_commands.register(add)
    schedule_commands.register(add)
    restart_commands.register(add)
    operation_commands.register(add)
    mpi_commands.register(add)
    run_command.register(add)

    p = add("demo", cmd_demo, "run the one-machine demo on emulated hosts, then clean up")
    p.add_argument("--mpi", action="store_true", help="also move an MPI job (MPICH) mid-run")
    p.add_argument(
        "--private-storage",
        action="store_true",
        help="on hosts that share no storage (each its own store, a partner copy of each)",
    )
    p.add_argument(
        "--hosts", type=between(6, MAX_HOSTS), default=6, help="number of hosts (default 6)"
    )

    keys_parser = sub.add_parser("keys", help="manage CurveZMQ keys and the API's TLS certificates")
    keys_sub = keys_parser.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    p = add_to(
        keys_sub,
        "init",
        cmd_keys_init,
        "create the coordinator's and agents' key pairs",
        daemon=True,
    )
    p.add_argument("--dir", type=Path, help="keys directory (default: keys_dir)")
    p.add_argument(
        "--agent",
        action="append",
        default=[],
        metavar="NAME",
        help="create a key pair for this agent (repeatable)",
    )
    key_commands.register(partial(add_to, keys_sub))

    tb = sub.add_parser("testbed", help="emulated hosts on this machine (network namespaces)")
    tb_sub = tb.add_subparsers(dest="testbed_command", required=True, metavar="ACTION")
    p = add_to(tb_sub, "up", cmd_testbed_up, "create hosts h1..hN, start a coordinator and agents")
    p.add_argument(
        "--hosts", type=between(1, MAX_HOSTS), default=3, help="number of hosts (default 3)"
    )
    p.add_argument(
        "--slurm", action="store_true", help="also run Slurm: munge, slurmctld, a slurmd per host"
    )
    p.add_argument(
        "--private-storage",
        action="store_true",
        help="give each host its own /tmp, /dev/shm, agent work directory and checkpoint store, "
        "as nodes that share only home directories",
    )
    p.add_argument(
        "--replicas",
        type=between(0, 1),
        default=0,
        help="partner copies of each host's checkpoint images after a commit (default 0)",
    )
    add_to(tb_sub, "status", cmd_testbed_status, "show the testbed's daemons", True)
    p = add_to(tb_sub, "start", cmd_testbed_start, "start a stopped testbed daemon")
    p.add_argument("daemon", help='"coordinator" or "agent-hN"')
    add_to(tb_sub, "down", cmd_testbed_down, "remove everything the testbed made")
    for action in tb_sub.choices.values():
        action.add_argument(
            "--dir",
            type=Path,
            default=DEFAULT_DIR,
            help=f"testbed state directory (default {DEFAULT_DIR})",
        )
    return parser


def _dispatch(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = _load(args)
        return int(args.func(args, config))
    except CrctlError as exc:
        print(f"crctl: error: {exc}", file=sys.stderr)
        return int(exit_code_for(exc))
    except KeyboardInterrupt:
        return 130


def _reader_gone() -> int:
    """Whoever read our stdout stopped (`| head`, a pager quit): end quietly, as a Unix tool
    killed by SIGPIPE would, without setting SIGPIPE's default action, which would kill
    long-running commands over any closed socket or child's pipe. Stdout now points at
    /dev/null, so the interpreter's last flush of what is still buffered cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            return _dispatch(argv)  # argparse's --help and usage errors exit from here too
        finally:
            sys.stdout.flush()  # in here, so that a reader gone is seen here
    except BrokenPipeError:
        return _reader_gone()
