"""Real local users for the end-to-end tests: made with useradd, removed with userdel (only
those a test made), and the installed `crctl` run as them, as a person would."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CRCTL = Path("/usr/local/bin/crctl")  # deploy/setup.sh puts it there, runnable by everyone


@contextmanager
def local_users(*names: str) -> Iterator[dict[str, pwd.struct_passwd]]:
    """Users ``names`` (with a home directory) for the duration; those that did not exist
    before are removed after, with their homes and their processes."""
    if shutil.which("useradd") is None:
        pytest.fail("useradd is missing (Debian's passwd package)", pytrace=False)
    made = []
    try:
        for name in names:
            try:
                pwd.getpwnam(name)
            except KeyError:
                subprocess.run(
                    ["useradd", "--create-home", "--shell", "/bin/bash", name],
                    check=True,
                    capture_output=True,
                )
                made.append(name)
        yield {name: pwd.getpwnam(name) for name in names}
    finally:
        for name in made:
            subprocess.run(["pkill", "-KILL", "-u", name], check=False, capture_output=True)
            subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)


def as_user(
    user: str, *argv: str, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as ``user`` (no root left: runuser drops every credential), in their home
    or ``cwd``, with a login's environment."""
    entry = pwd.getpwnam(user)
    env = {
        "HOME": entry.pw_dir,
        "USER": user,
        "LOGNAME": user,
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
    }
    runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")
    if runuser is None:
        pytest.fail("runuser is missing (util-linux)", pytrace=False)
    return subprocess.run(
        [runuser, "-u", user, "--", *argv],
        cwd=cwd or entry.pw_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def crctl_as(user: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The installed CLI, as ``user``."""
    if not os.access(CRCTL, os.X_OK):
        pytest.fail(f"{CRCTL} is missing: run deploy/setup.sh", pytrace=False)
    return as_user(user, str(CRCTL), *args, cwd=cwd)


def process_user(pid: int) -> str:
    """Who a process runs as (real and effective uid must agree), by name."""
    uids = Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[:2]
    assert uids[0] == uids[1], f"pid {pid} has real uid {uids[0]}, effective {uids[1]}"
    return pwd.getpwuid(int(uids[0])).pw_name


def ps_user(pid: int) -> str:
    """What `ps -o user= -p PID` says."""
    result = subprocess.run(
        ["ps", "-o", "user=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    return result.stdout.strip()


def tree_users(pid: int) -> set[str]:
    """The users of ``pid`` and all its descendants."""
    found = {process_user(pid)}
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in children:
        found |= tree_users(int(child))
    return found
