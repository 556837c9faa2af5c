#!/usr/bin/env bash
# Installs everything crctl needs on a Debian machine, as root: system packages (nftables,
# iproute2, tini, ...), CRIU 4.2.1 with crctl's patches (built from Debian's source, cached),
# the Python environment in .venv with crctl and its development tools, pycriu in it, and
# /usr/local/bin/crctl, which every local user can run (checked as user nobody at the end).
# Idempotent: a second run only checks.
#
# The venv is made from a world-executable interpreter (Debian's /usr/bin/python3 when present;
# CRCTL_PYTHON overrides). When the checkout cannot be read by other users (cloned under /root,
# say), the editable install in .venv is of no use to them: then a copy of crctl is installed
# into its own venv in /opt/crctl (CRCTL_SYSTEM_VENV), and /usr/local/bin/crctl runs that one.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${CRCTL_VENV:-$here/.venv}
system_venv=${CRCTL_SYSTEM_VENV:-/opt/crctl}
command_link=/usr/local/bin/crctl
if [ -n "${CRCTL_PYTHON:-}" ]; then
    python=$CRCTL_PYTHON
elif [ -x /usr/bin/python3 ]; then
    python=/usr/bin/python3
else
    python=python3
fi
pip_quiet=(--quiet --disable-pip-version-check)

say() { printf 'setup: %s\n' "$*"; }
die() {
    printf 'setup: ERROR: %s\n' "$*" >&2
    exit 1
}

# as_other CMD...: run CMD as user nobody, with no groups, a clean environment and / as the
# working directory: what any local user without privileges would get.
as_other() {
    (cd / && setpriv --reuid=nobody --regid=nogroup --clear-groups \
        env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/nonexistent LANG=C.UTF-8 "$@")
}

if [ "$(id -u)" != 0 ]; then
    echo "setup: must run as root (CRIU, namespaces and nftables need it)" >&2
    exit 1
fi

# Debian's interpreter needs its venv module (and headers, for packages built from source).
if [ "$python" = /usr/bin/python3 ] && command -v dpkg-query >/dev/null &&
    ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
    say "installing python3-venv and python3-dev"
    (
        # shellcheck source=install-criu.sh
        source "$here/deploy/install-criu.sh"
        apt_install python3-venv python3-dev
    )
fi

# The interpreter itself, not the venv's link to it: the venv may sit in a checkout other users
# cannot enter, which recreating it would not change.
if [ -x "$venv/bin/python" ] && ! as_other "$(readlink -f "$venv/bin/python")" -c '' 2>/dev/null; then
    if as_other "$(command -v "$python")" -c '' 2>/dev/null; then
        say "recreating $venv: its interpreter $(readlink -f "$venv/bin/python") cannot be run by other users; using $python"
        rm -rf "$venv"
    else
        say "warning: $python cannot be run by other users either; keeping $venv"
    fi
fi
if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv with $python"
    "$python" -m venv "$venv"
fi
say "installing crctl and its development tools into $venv"
"$venv/bin/python" -m pip install "${pip_quiet[@]}" --upgrade pip
"$venv/bin/python" -m pip install "${pip_quiet[@]}" -e "$here[dev,mpi]"

say "installing CRIU, pycriu and the system tools"
"$here/deploy/install-criu.sh" --python "$venv/bin/python"

# /usr/local/bin/crctl: the editable install itself when other users can import it from the
# checkout, else a copy in its own venv.
if as_other "$venv/bin/crctl" --help >/dev/null 2>&1; then
    ln -sfn "$venv/bin/crctl" "$command_link"
    say "$command_link -> $venv/bin/crctl (the checkout is readable by every user)"
else
    say "$here or $venv cannot be read by other users: installing a copy of crctl into $system_venv"
    if [ -x "$system_venv/bin/python" ] && ! as_other "$system_venv/bin/python" -c '' 2>/dev/null; then
        rm -rf "$system_venv"
    fi
    if [ ! -x "$system_venv/bin/python" ]; then
        "$python" -m venv "$system_venv"
    fi
    # The same protobuf as in $venv, so that pycriu (generated for it there) works here too.
    protobuf=$("$venv/bin/python" -c 'from importlib.metadata import version; print(version("protobuf"))')
    "$system_venv/bin/python" -m pip install "${pip_quiet[@]}" --upgrade pip
    "$system_venv/bin/python" -m pip install "${pip_quiet[@]}" "$here" "protobuf==$protobuf"
    # The checkout as it is now, even when its version number did not change.
    "$system_venv/bin/python" -m pip install "${pip_quiet[@]}" --force-reinstall --no-deps "$here"
    purelib() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
    pth=$(purelib "$venv/bin/python")/crctl-pycriu.pth
    if [ -f "$pth" ]; then
        cp "$pth" "$(purelib "$system_venv/bin/python")/"
    fi
    chmod -R go+rX "$system_venv"
    ln -sfn "$system_venv/bin/crctl" "$command_link"
    say "$command_link -> $system_venv/bin/crctl (a copy: run deploy/setup.sh again after changing the checkout)"
fi

# The services the end-to-end tests and the workload catalogue (tests/workloads/catalogue: redis,
# memcached, postgres, nginx_download, jvm) move between hosts, and Slurm (`crctl testbed up
# --slurm`). Installed without starting them (a policy-rc.d refusing every start, no default
# PostgreSQL cluster): the tests and the testbed run their own.
say "installing PostgreSQL, nginx, Redis, memcached, a JRE and Slurm (slurm-wlm, munge), not started"
(
    # shellcheck source=install-criu.sh
    source "$here/deploy/install-criu.sh"
    services=(postgresql-15 nginx-light redis-server memcached default-jre-headless slurm-wlm munge)
    missing=0
    for package in "${services[@]}"; do
        pkg_installed "$package" || missing=1
    done
    if [ "$missing" = 1 ]; then
        mkdir -p /etc/postgresql-common
        conf=/etc/postgresql-common/createcluster.conf
        if grep -q '^ *create_main_cluster' "$conf" 2>/dev/null; then
            sed -i 's/^ *create_main_cluster.*/create_main_cluster = false/' "$conf"
        else
            echo 'create_main_cluster = false' >>"$conf"
        fi
        policy=/usr/sbin/policy-rc.d
        had_policy=0
        [ -e "$policy" ] && had_policy=1
        [ "$had_policy" = 1 ] || printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        apt_install "${services[@]}"
        [ "$had_policy" = 1 ] || rm -f "$policy"
    fi
)

say "checking the host"
"$venv/bin/crctl" doctor

say "checking that other users can run $command_link (as user nobody)"
if ! out=$(as_other "$command_link" --help 2>&1 >/dev/null); then
    die "user nobody cannot run $command_link --help:
$out"
fi
say "done: $venv/bin/crctl is ready, and $command_link for every user"
