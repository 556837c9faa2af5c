"""`crctl demo`: the whole story on one machine, through the public CLI.

Six emulated hosts come up; a 3-rank TCP token ring starts on h1-h3; crctl checkpoints it
(the ranks stop), restarts it on h4-h6 with its live TCP connections moved to the new
addresses, shows the ring counting on from where it stopped, and removes everything.

`crctl demo --mpi`: the same with an MPI job (examples/mpi_ring.py through `crctl mpirun`),
moved mid-run; its final result is checked against the same program run without crctl."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from testbed import bed
from testbed.ringjob import RingJob, launch_ring

JOB = "ring"


def _show(*args: str) -> None:
    print(f"\n$ crctl {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "cli", *args], check=True)


def _progress(ring: RingJob, label: str, seconds: float = 2.0) -> None:
    before = ring.statuses()
    time.sleep(seconds)
    after = ring.statuses()
    for old, new in zip(before, after, strict=True):
        inbound = " <- ".join(new.get("inbound") or ["?"])
        print(
            f"  {label} rank {new.get('rank')}: token {old.get('last_sequence')} -> "
            f"{new.get('last_sequence')}, errors {len(new['errors'])}, "
            f"inbound {inbound}"
        )
    if ring.errors():
        raise SystemExit(f"the ring reported errors: {ring.errors()}")


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mpi_ring.py"
MPI_STEPS = "3000"


def _step(folder: Path) -> int:
    steps = []
    for path in folder.glob("*.json"):
        try:
            steps.append(int(json.loads(path.read_text())["step"]))
        except (KeyError, ValueError):
            steps.append(0)
    return min(steps, default=0)


def _wait(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"the demo gave up waiting for {what}")
        time.sleep(0.1)


def _mpi_story() -> None:
    folder = Path(tempfile.mkdtemp(prefix="crctl-demo-mpi-"))
    try:
        _mpi_moves(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _mpi_moves(folder: Path) -> None:
    print("\n# an MPI job (MPICH, mpi4py): a ring exchange plus an allreduce per step", flush=True)
    _show("mpirun", "--job", "mpi", "--hosts", "h1,h2,h3", "--", sys.executable, str(EXAMPLE),
          "--steps", MPI_STEPS, "--interval", "0.004", "--status", str(folder),
          "--result", str(folder / "result"))  # fmt: skip
    _wait(lambda: _step(folder) >= 200, "the MPI job's first steps")
    _show("status", "mpi")
    _show("checkpoint", "mpi")
    print(f"  stopped at step {_step(folder)} of {MPI_STEPS}", flush=True)
    _show("restart", "mpi", "--map", "h1=h4,h2=h5,h3=h6")
    _wait(lambda: (folder / "result").exists(), "the MPI job's result")
    moved = (folder / "result").read_text().strip()
    env = {**os.environ, "MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp",
           "MPIR_CVAR_NOLOCAL": "1"}  # fmt: skip
    plain = subprocess.run(
        [str(Path(sys.executable).with_name("mpiexec")), "-n", "3", sys.executable,
         str(EXAMPLE), "--steps", MPI_STEPS],
        capture_output=True, text=True, env=env, check=True, cwd="/",
    ).stdout.split("RESULT ")[1].split()[0]  # fmt: skip
    print(f"\nresult after the move: {moved}; the same program without crctl: {plain}")
    if moved != plain:
        raise SystemExit("the results differ")
    print("The MPI job moved mid-run with its connections: no re-initialisation, same result.")


def run_demo(hosts: int = 6, *, with_mpi: bool = False, private_storage: bool = False) -> None:
    if hosts < 6:
        raise SystemExit("the demo needs 6 hosts: a ring on h1-h3 moving to h4-h6")
    print(f"== crctl demo: {hosts} emulated hosts on this machine ==", flush=True)
    state = bed.up(
        hosts, bed.DEFAULT_DIR, private_storage=private_storage, replicas=int(private_storage)
    )
    if private_storage:
        print(
            "(hosts that share no storage: each has its own /tmp, /dev/shm and checkpoint "
            "store; the restart fetches the images from the hosts that dumped them)",
            flush=True,
        )
    try:
        _show("agents")
        print("\n# a 3-rank TCP token ring on h1, h2, h3", flush=True)
        ring = launch_ring(state, JOB, ["h1", "h2", "h3"])
        ring.wait_for_tokens(20, timeout=30)
        _show("status", JOB)
        _progress(ring, "running on h1-h3:")
        _show("checkpoint", JOB)
        _show("checkpoints", JOB)
        _show("restart", JOB, "--map", "h1=h4,h2=h5,h3=h6")
        _show("status", JOB)
        _progress(ring, "restarted on h4-h6:")
        print(
            "\nThe ring kept its TCP connections across the move: no reconnect, no token "
            "lost or repeated."
        )
        if with_mpi:
            _mpi_story()
    finally:
        print("\n$ crctl testbed down", flush=True)
        bed.down(bed.DEFAULT_DIR)
        print("testbed down: nothing left behind")
