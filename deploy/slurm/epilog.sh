#!/bin/sh
# Slurm epilog (Epilog= in slurm.conf; runs as root on every node of a job when it ends):
# kill what a crashed `crctl run` of this job left running. crctl's agents run outside Slurm's
# cgroups, so Slurm cannot reap the job's ranks itself; `crctl run` kills them on its way
# out, and this covers a `crctl run` that was SIGKILLed or lost its node. Idempotent: a job
# already gone, or never a crctl job, is a no-op. A requeued job keeps its ranks stopped in
# its checkpoint (nothing runs), so the next run restarts from it.
job="slurm-${SLURM_JOB_ID:?}"
crctl=${CRCTL:-/usr/local/bin/crctl}
[ -x "$crctl" ] || exit 0
if "$crctl" status "$job" --json 2>/dev/null | grep -q '"state": "running"'; then
    "$crctl" kill "$job" >/dev/null 2>&1 || true
fi
exit 0
