"""The bounds on request values, the same for the CLI (which refuses them before sending) and the
coordinator's API (which refuses them before its domain sees them)."""

from __future__ import annotations

MAX_RANK = 1_000_000  # rank numbers run 0..MAX_RANK
# Entries in one list or map of a request (argv, env, hosts, a host map, plugins, options).
MAX_ITEMS = 10_000
# Seconds: a checkpoint's prepare deadline or a restart step's; past a day it is a typo.
MAX_TIMEOUT = 86_400.0
# A schedule's interval, in seconds: at least one (0 switches it off), at most a year.
MIN_EVERY = 1.0
MAX_EVERY = 366 * 86_400.0
# The newest checkpoints a schedule keeps (0: the coordinator's retain_checkpoints).
MAX_KEEP = 1_000
MAX_REQUEST_ID = 200  # characters of an idempotency key
