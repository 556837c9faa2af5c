"""Starts one rank as the init of new PID and IPC namespaces. Run as a program by
``agent.ranks`` (``python -I -S rank_launcher.py ...``), never imported by the agent: it uses
the standard library only and must start fast.

    rank_launcher.py --cgroup-procs FILE --init-cwd DIR --cwd DIR --umask OCTAL
                     --user UID:GID:GROUPS --stdout-fd N --env-fd M -- COMMAND [ARG]...

fd M is a memfd holding the rank's environment (JSON). The launcher itself, tini and setpriv
run as root with an environment of their own: only the last step, as the owner, takes the
rank's (the owner's environment in a root process would let LD_PRELOAD and its kind run the
owner's code as root).

The launcher unshares its PID and IPC namespaces (CRIU dumps SysV shared memory, semaphores and
queues only with the IPC namespace they live in: PostgreSQL keeps a segment) and forks; the
child becomes PID 1 of the new namespace, makes itself a session leader (``setsid``), joins the
rank's freezer cgroup (writing ``0`` to ``cgroup.procs``: "myself", whatever the PID namespace),
takes stdin from /dev/null and stdout/stderr from fd N, sets the umask, restores default signal
dispositions, and execs ``tini`` in ``--init-cwd`` (a directory of the rank's own). tini,
staying root, runs COMMAND as its only child with the owner's credentials (``setpriv``: uid,
gid, supplementary groups, no capabilities) in ``--cwd`` (a last step in Python reads the
environment, changes directory, execs), reaps orphans, passes signals on and exits with
COMMAND's status.

Why a root init: CRIU's parasite in a dump's root task mounts a /proc of the task's PID
namespace, which an unprivileged task may not do; and it does so in that task's working
directory, which two ranks sharing a working directory would then race for.

Before the exec, a throwaway child with the owner's credentials checks that the owner may enter
``--cwd`` and can find COMMAND, so those refusals reach the caller. The launcher waits for the
exec (a close-on-exec pipe tells it apart from a failure), prints the init's PID (in the
launcher's namespace) on stdout and exits: the init is then adopted by the nearest child
subreaper, the agent. No parent-death signal is set: a restored task would receive it when CRIU
exits (FINDINGS 13)."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import sys

CLONE_NEWPID = 0x20000000
CLONE_NEWIPC = 0x08000000
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TINI = "/usr/bin/tini"
SETPRIV = "/usr/bin/setpriv"
# The last step, as the owner: the rank's environment from the inherited memfd (closed, so the
# command does not hold it), the working directory, the exec. Inline, so that it needs no file
# the owner might not be allowed to read.
BECOME = """
import json, os, sys
fd, cwd, command = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
env = json.loads(os.pread(fd, os.fstat(fd).st_size, 0))
os.close(fd)
try:
    os.chdir(cwd)
    os.execvpe(command[0], command, env)
except OSError as exc:
    print(f"crctl: cannot run {command[0]} in {cwd}: {exc.strerror}", file=sys.stderr)
    sys.exit(127)
"""
_OPTIONS = {
    "--cgroup-procs", "--init-cwd", "--cwd", "--umask", "--user", "--stdout-fd", "--env-fd",
}  # fmt: skip
_USAGE = "usage: rank_launcher.py " + " ".join(f"{o} X" for o in sorted(_OPTIONS)) + " -- CMD"


class Owner:
    def __init__(self, spec: str) -> None:
        uid, gid, groups = spec.split(":")
        self.uid = int(uid)
        self.gid = int(gid)
        self.groups = [int(g) for g in groups.split(",") if g]

    def become(self) -> None:
        os.setgroups(self.groups)
        os.setresgid(self.gid, self.gid, self.gid)
        os.setresuid(self.uid, self.uid, self.uid)

    def setpriv(self) -> list[str]:
        """The argv prefix that runs a command with these credentials and no capabilities."""
        if self.uid == 0:
            return []
        groups = ["--groups", ",".join(map(str, self.groups))] if self.groups else []
        return [
            SETPRIV,
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            *(groups or ["--clear-groups"]),
            "--inh-caps=-all",
            "--",
        ]


def _parse(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    if "--" not in argv:
        raise SystemExit(_USAGE)
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1 :]
    values = dict(zip(options[::2], options[1::2], strict=False))
    if not command or set(values) != _OPTIONS:
        raise SystemExit(_USAGE)
    return values, command


def _read_to_end(fd: int) -> str:
    """What a child wrote on a pipe before closing it (by exiting or exec), then closed."""
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode(errors="replace")


def _python() -> str:
    """An interpreter every user may run (the agent's own may live in root's home)."""
    return "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


def _rank_env(fd: int) -> dict[str, str]:
    env: dict[str, str] = json.loads(os.pread(fd, os.fstat(fd).st_size, 0))
    return env


def _check_as_owner(owner: Owner, cwd: str, command: list[str], path: str) -> str:
    """Whether the owner may enter ``cwd`` and run ``command`` there: "" or the reason."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        reason = ""
        try:
            owner.become()
            os.chdir(cwd)
            program = command[0]
            if "/" in program:
                found = program if os.access(program, os.X_OK) else None
            else:
                found = shutil.which(program, path=path)
            if found is None or os.path.isdir(found):
                reason = f"{program}: command not found or not executable (as uid {owner.uid})"
        except OSError as exc:
            reason = f"uid {owner.uid} cannot use {cwd!r} as its working directory: {exc.strerror}"
        os.write(write_fd, reason.encode())
        os._exit(0)
    os.close(write_fd)
    reason = _read_to_end(read_fd)
    os.waitpid(pid, 0)
    return reason


def _become_rank(values: dict[str, str], command: list[str]) -> None:
    os.setsid()
    fd = os.open(values["--cgroup-procs"], os.O_WRONLY)
    try:
        os.write(fd, b"0\n")
    finally:
        os.close(fd)
    owner = Owner(values["--user"])
    os.umask(int(values["--umask"], 8))
    env_fd = int(values["--env-fd"])
    path = _rank_env(env_fd).get("PATH", os.defpath)
    reason = _check_as_owner(owner, values["--cwd"], command, path)
    if reason:
        raise PermissionError(reason)
    os.chdir(values["--init-cwd"])
    stdout_fd = int(values["--stdout-fd"])
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(stdout_fd, 1)
    os.dup2(stdout_fd, 2)
    for extra in {devnull, stdout_fd} - {0, 1, 2}:
        os.close(extra)
    os.set_inheritable(env_fd, True)
    # Python ignores SIGPIPE (and SIGXFSZ); an ignored disposition survives exec.
    for signum in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(signum, signal.SIG_DFL)
    become = [_python(), "-I", "-S", "-c", BECOME, str(env_fd), values["--cwd"], *command]
    # tini and setpriv run as root: with an environment of ours, never the owner's
    # (LD_PRELOAD and its kind would run the owner's code as root).
    os.execve(TINI, [TINI, "--", *owner.setpriv(), *become], {"PATH": SAFE_PATH})


def main(argv: list[str]) -> int:
    values, command = _parse(argv)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWPID | CLONE_NEWIPC) != 0:
        err = ctypes.get_errno()
        print(f"unshare(CLONE_NEWPID | CLONE_NEWIPC) failed: {os.strerror(err)}", file=sys.stderr)
        return 1
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(report_r)
        try:
            _become_rank(values, command)
        except BaseException as exc:
            message = (
                str(exc) if isinstance(exc, PermissionError) else f"{type(exc).__name__}: {exc}"
            )
            os.write(report_w, message.encode())
        os._exit(127)
    os.close(report_w)
    failure = _read_to_end(report_r)
    if failure:
        os.waitpid(pid, 0)
        print(failure, file=sys.stderr)
        return 1
    print(json.dumps({"pid": pid}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
