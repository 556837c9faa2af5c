"""Emulated hosts on one machine: network namespaces on a bridge, each running a crctl agent,
with a coordinator in the root namespace. What `crctl testbed` drives and the e2e tests use."""

import os
from pathlib import Path

# Where a testbed keeps its state (here, not in bed.py, so that the CLI's parser can name the
# default without importing the testbed machinery).
DEFAULT_DIR = Path(os.environ.get("CRCTL_TESTBED_DIR", "/run/crctl-testbed"))
