"""The fault matrix: every fault at every phase of a checkpoint and of a restart, with real CRIU
on the emulated-host testbed (testbed/faultmatrix.py), plus the lost commit and abort orders of
the in-process tier (tests/inproc/dropped.py). Prints one line per cell as it runs, then the
matrix (rows: fault, columns: phase, cell: what became of the job) and a last line

    faults: N injected, L jobs lost, I invalid checkpoints marked valid

    .venv/bin/python bench/faults.py [--only TEXT] [--list]

Needs root; brings up its own 6-host testbed and removes it afterwards. Exits 1 if a job was
lost, a checkpoint marked committed did not verify, or something was left behind."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testbed import bed
from testbed.faultmatrix import (
    CHECKPOINT_PHASES,
    RESTART_PHASES,
    Cell,
    Result,
    bring_up,
    cells,
    environment_ok,
    run_cells,
)
from tests.inproc import dropped, vtime
from tests.inproc.cluster import Cluster

IN_PROCESS = "commit/abort order lost (in-process)"


def in_process_cells() -> list[Result]:
    """The decision orders lost on the wire, in the in-process tier (a real network cannot drop
    one message on cue)."""
    import tempfile

    results = []
    for phase, scenario in (
        ("recorded", dropped.commit_dropped),
        ("dumping", dropped.abort_dropped),
    ):
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="crctl-faults-") as tmp:
            cluster = Cluster(Path(tmp), ["h1", "h2", "h3"])

            async def main(cluster: Cluster = cluster, scenario: object = scenario) -> str:
                import asyncio

                cluster.install(asyncio.get_running_loop())
                await cluster.up()
                outcome: str = await scenario(cluster)  # type: ignore[operator]
                await asyncio.sleep(120)  # every hold ends
                cluster.check_nothing_left()
                for owner in list(cluster._tasks):
                    await cluster._kill(owner)
                return outcome

            cell = Cell(IN_PROCESS, phase, "checkpoint")
            try:
                outcome = vtime.run(main())
                results.append(Result(cell, outcome, False, 0, [], time.monotonic() - started))
            except AssertionError as exc:
                results.append(
                    Result(cell, "error", True, 0, [str(exc)], time.monotonic() - started)
                )
    return results


def report(result: Result) -> None:
    mark = (
        "LOST"
        if result.lost
        else ("NOTE" if result.problems and "left behind" in " ".join(result.problems) else "ok")
    )
    print(
        f"{mark:<5} {result.cell.fault:<42} {result.cell.phase:<10} {result.outcome:<28} "
        f"{result.seconds:5.1f}s",
        flush=True,
    )
    for note in result.problems:
        if result.lost or "left behind" in note or "not valid" in note or "not judged" in note:
            print(f"      {note}", flush=True)


def table(results: list[Result]) -> str:
    phases = [
        *(("checkpoint", p) for p in CHECKPOINT_PHASES),
        *(("restart", p) for p in RESTART_PHASES),
    ]
    rows: dict[str, dict[tuple[str, str], str]] = {}
    for r in results:
        rows.setdefault(r.cell.fault, {})[(r.cell.operation, r.cell.phase)] = (
            "LOST: " if r.lost else ""
        ) + r.outcome
    width = 22
    head = ["fault".ljust(42)] + [f"{op[0]}:{p}"[:width].ljust(width) for op, p in phases]
    lines = [" | ".join(head), "-" * (44 + (width + 3) * len(phases))]
    for fault, found in rows.items():
        line = [fault[:42].ljust(42)]
        line += [found.get(key, "-")[:width].ljust(width) for key in phases]
        lines.append(" | ".join(line))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="", help="run only cells whose fault or phase has TEXT")
    parser.add_argument("--list", action="store_true", help="list the cells and exit")
    args = parser.parse_args()
    chosen = [c for c in cells() if args.only.lower() in f"{c.fault} {c.phase}".lower()]
    if args.list:
        for cell in chosen:
            print(f"{cell.operation:<10} {cell.phase:<10} {cell.fault}")
        return 0
    why = environment_ok()
    if why:
        print(f"faults: {why}", file=sys.stderr)
        return 2
    started = time.monotonic()
    results: list[Result] = []
    if not args.only or args.only.lower() in IN_PROCESS.lower():
        for result in in_process_cells():
            report(result)
            results.append(result)
    testbed = bring_up()
    try:
        results += run_cells(testbed, chosen, report)
    finally:
        bed.down(bed.DEFAULT_DIR)
    print()
    print(table(results))
    lost = sum(r.lost for r in results)
    invalid = sum(r.invalid_marked_valid for r in results)
    left = sum(any("left behind" in n for n in r.problems) for r in results)
    print(
        f"\n{len(results)} cells in {time.monotonic() - started:.0f}s; {left} left something behind"
    )
    print(
        f"faults: {len(results)} injected, {lost} jobs lost, "
        f"{invalid} invalid checkpoints marked valid"
    )
    return 1 if lost or invalid or left else 0


if __name__ == "__main__":
    raise SystemExit(main())
