#!/usr/bin/env bash
# Installs everything crctl needs on a Debian machine, as root: system packages (nftables,
# iproute2, tini, ...), CRIU 4.2.1 with crctl's patches (built from Debian's source, cached),
# the Python environment in .venv with crctl and its development tools, and pycriu in it.
# Idempotent: a second run only checks.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${CRCTL_VENV:-$here/.venv}
python=${CRCTL_PYTHON:-python3}

say() { printf 'setup: %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
    echo "setup: must run as root (CRIU, namespaces and nftables need it)" >&2
    exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv"
    "$python" -m venv "$venv"
fi
say "installing crctl and its development tools into $venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$here[dev]"

say "installing CRIU, pycriu and the system tools"
"$here/deploy/install-criu.sh" --python "$venv/bin/python"

say "checking the host"
"$venv/bin/crctl" doctor
say "done: $venv/bin/crctl is ready"
