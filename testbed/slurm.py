"""Real Slurm on the testbed (`crctl testbed up --slurm`, FINDINGS 22): munge, slurmctld in the
machine's namespace, one slurmd per emulated host in that host's network namespace (nodes
h1..hN, partition `debug`), so that `sbatch`, `squeue`, `scontrol` and `scancel` work from the
machine. Everything lives in the testbed's folder but the configuration, which the Slurm
commands read at /etc/slurm/slurm.conf (written with a marker; a file there that is not the
testbed's is never touched). The daemons are the testbed's processes: `testbed down` stops them,
removes their state with its folder, and the configuration."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from crctl.errors import CrctlError, PrerequisiteError
from testbed import netns, procs

CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# written by crctl testbed: removed by `crctl testbed down`"
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol")
EPILOG = Path(__file__).resolve().parents[1] / "deploy" / "slurm" / "epilog.sh"


def missing() -> list[str]:
    """The Slurm programs this machine lacks (deploy/setup.sh installs slurm-wlm and munge)."""
    return [tool for tool in DAEMONS if shutil.which(tool, path="/usr/sbin:/usr/bin") is None]


def _conf(folder: Path, hosts: dict[str, str]) -> str:
    names = sorted(hosts, key=lambda h: int(h[1:]))
    nodes = "\n".join(f"NodeName={h} NodeAddr={hosts[h]} CPUs=1 State=UNKNOWN" for h in names)
    return f"""{MARKER}
ClusterName=crctl
SlurmctldHost={socket.gethostname()}({netns.BRIDGE_ADDRESS})
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SchedulerType=sched/backfill
MailProg=/bin/true
JobRequeue=1
ReturnToService=2
MinJobAge=300
StateSaveLocation={folder}/state
SlurmctldPidFile={folder}/slurmctld.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdSpoolDir={folder}/spool/%n
SlurmdPidFile={folder}/slurmd-%n.pid
SlurmdLogFile={folder}/slurmd-%n.log
Epilog={EPILOG}
{nodes}
PartitionName=debug Nodes={",".join(names)} Default=YES MaxTime=INFINITE State=UP
"""


def start(
    folder: Path, hosts: dict[str, str], namespaces: dict[str, str]
) -> dict[str, procs.ProcessRef]:
    """munged, slurmctld and a slurmd per host (``hosts``: name -> address; ``namespaces``:
    name -> its network namespace); the daemons by name, for the testbed to stop."""
    lacking = missing()
    if lacking:
        raise PrerequisiteError(
            f"Slurm is not installed ({', '.join(lacking)} missing): deploy/setup.sh installs "
            "slurm-wlm and munge"
        )
    if CONF.exists() and MARKER not in CONF.read_text():
        raise CrctlError(f"{CONF} exists and is not the testbed's: the testbed will not replace it")
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool", "munge"):
        (folder / sub).mkdir(exist_ok=True)
    CONF.parent.mkdir(parents=True, exist_ok=True)
    CONF.write_text(_conf(folder, hosts))
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    started: dict[str, procs.ProcessRef] = {}
    munge = folder / "munge"
    subprocess.run(
        ["munged", "--force", f"--log-file={munge}/munged.log", f"--seed-file={munge}/seed",
         f"--pid-file={munge}/munged.pid"],
        check=True, capture_output=True,
    )  # fmt: skip
    started["slurm-munged"] = _from_pidfile(munge / "munged.pid")
    subprocess.run(["slurmctld", "-i"], check=True, capture_output=True)
    started["slurm-slurmctld"] = _from_pidfile(folder / "slurmctld.pid")
    for name, namespace in namespaces.items():
        subprocess.run(
            [*netns.nsenter_prefix(namespace), "slurmd", "-N", name],
            check=True,
            capture_output=True,
        )
        started[f"slurm-slurmd-{name}"] = _from_pidfile(folder / f"slurmd-{name}.pid")
    _wait_for_nodes(list(hosts))
    return started


def _from_pidfile(path: Path, timeout: float = 10.0) -> procs.ProcessRef:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            time.sleep(0.05)
            continue
        return procs.ProcessRef(pid, procs.start_ticks(pid) or 0)
    raise CrctlError(f"a Slurm daemon did not write {path} within {timeout:.0f}s")


def _wait_for_nodes(names: list[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    states = ""
    while time.monotonic() < deadline:
        shown = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, check=False
        )
        states = shown.stdout
        idle = {line.split()[0] for line in states.splitlines() if line.split()[1:] == ["idle"]}
        if set(names) <= idle:
            return
        time.sleep(0.3)
    raise CrctlError(f"Slurm's nodes are not all idle after {timeout:.0f}s: {states.strip()}")


def remove_conf() -> bool:
    """Remove the testbed's slurm.conf (the daemons go with the testbed's processes, their
    state with its folder); True if there was one."""
    if CONF.exists() and MARKER in CONF.read_text():
        CONF.unlink()
        return True
    return False
