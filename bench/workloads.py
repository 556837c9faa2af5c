"""The workload catalogue (tests/workloads/catalogue) on real CRIU: every workload launched on
emulated hosts, checkpointed with its ranks left running, checkpointed and restarted on other
hosts, then moved once more; each step passes when every rank went on making progress it
verified itself, with no error of its own.

    .venv/bin/python bench/workloads.py [--only NAME,...] [--store-on-disk] [--shared-storage]

Prints the catalogue as a table (workload, ranks, what it covers, each step's result, time)
and `workloads: P of N passed`. Needs root; brings up its own testbed (three hosts per rank of
the widest workload) and removes it afterwards. By default its hosts share no storage (each
its own /tmp, /dev/shm, agent work dir and checkpoint store; a partner copy of each host's
images after every commit): a restart on other hosts fetches the images from the hosts that
hold them. ``--shared-storage`` runs it with one checkpoint store for all."""

from __future__ import annotations

import argparse
import sys

import _checkout  # noqa: F401  # this checkout first on sys.path
from store import add_option, bench_testbed

from testbed import workloads
from tests.workloads.catalogue import WORKLOADS

CELL = 90  # a step's reason is cut in the table (whole on stderr)


def _cell(text: str) -> str:
    return text if len(text) <= CELL else text[: CELL - 1] + "…"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated workload names")
    parser.add_argument(
        "--shared-storage",
        action="store_true",
        help="one checkpoint store and /tmp for every host (default: each host its own)",
    )
    add_option(parser)
    args = parser.parse_args()
    chosen = (
        [WORKLOADS[n] for n in args.only.split(",") if n] if args.only else list(WORKLOADS.values())
    )
    hosts = 3 * max(spec.ranks for spec in chosen)
    results = []
    private = not args.shared_storage
    with bench_testbed(
        hosts, on_disk=args.store_on_disk, private_storage=private, replicas=int(private)
    ) as (state, _):
        for spec in chosen:
            result = workloads.run(state, spec, say=lambda line: print(line, file=sys.stderr))
            results.append((spec, result))
            print(
                f"{spec.name}: {'pass' if result.passed else 'FAIL'} ({result.seconds:.1f}s)",
                file=sys.stderr,
                flush=True,
            )
    header = ["workload", "ranks", "covers", *workloads.STEPS, "seconds"]
    rows = [
        [
            spec.name,
            str(spec.ranks),
            spec.covers,
            *(_cell(result.steps.get(step, "-")) for step in workloads.STEPS),
            f"{result.seconds:.1f}",
        ]
        for spec, result in results
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    passed = sum(result.passed for _, result in results)
    refused = sum(bool(result.refusal) for _, result in results)
    storage = "hosts sharing no storage, a partner copy each" if private else "a shared store"
    print(
        f"workloads: {passed} of {len(results)} passed, {refused} of them documented "
        f"refusals ({storage})"
    )
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
