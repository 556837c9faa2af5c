"""An MPI job whose result depends on every message: each step, every rank passes a value to
the next rank of a ring and the ranks then agree on a sum (allreduce); the value each rank
carries mixes in what it received and the sum. The final result is the same for every run,
interrupted or not, so a checkpoint and a restart elsewhere can be checked against it.

    mpiexec -n 3 python examples/mpi_ring.py --steps 3000 [--interval 0.005]
            [--status DIR] [--result FILE] [--memory-mib N]

``--status DIR``: each rank rewrites DIR/<rank>.json with its step (renamed in, never held
open). ``--result FILE``: rank 0 writes the final result there. ``--memory-mib``: each rank
also holds (and folds into its value) that much memory."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from mpi4py import MPI

MODULUS = (1 << 61) - 1


STALL = 0.05  # a gap between two steps this long is recorded (what a checkpoint costs the job)


def write_status(
    folder: Path, rank: int, step: int, value: int, stalls: list[tuple[float, float]]
) -> None:
    path = folder / f"{rank}.json"
    tmp = folder / f".{rank}.json.tmp"
    record = {"rank": rank, "step": step, "value": value, "at": time.time(), "stalls": stalls}
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--interval", type=float, default=0.0)
    parser.add_argument("--status", type=Path)
    parser.add_argument("--result", type=Path)
    parser.add_argument("--memory-mib", type=int, default=0)
    args = parser.parse_args()

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    ballast = bytearray(range(256)) * (args.memory_mib * 4096)  # the same in every run
    value = (rank + 1) * 1_000_003 + sum(ballast[::4096])
    right, left = (rank + 1) % size, (rank - 1) % size
    stalls: list[tuple[float, float]] = []  # (when it ended, seconds), the last 20
    last = time.time()
    for step in range(1, args.steps + 1):
        received = comm.sendrecv(value, dest=right, source=left)
        total = comm.allreduce(value % 1_000_000_007, op=MPI.SUM)
        value = (value * 31 + received * 17 + total + step) % MODULUS
        now = time.time()
        if now - last >= STALL:
            stalls = [*stalls[-19:], (now, now - last)]
        last = now
        if args.status is not None and (step % 20 == 0 or step == args.steps):
            write_status(args.status, rank, step, value, stalls)
        if args.interval:
            time.sleep(args.interval)
    results = comm.gather(value, root=0)
    if rank == 0:
        assert results is not None
        result = 0
        for item in results:
            result = (result * 1_000_033 + item) % MODULUS
        print(f"RESULT {result}", flush=True)
        if args.result is not None:
            args.result.write_text(f"{result}\n")


if __name__ == "__main__":
    main()
