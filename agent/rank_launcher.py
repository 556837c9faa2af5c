"""Starts one rank as the init of a new PID namespace. Run as a program by ``agent.ranks``
(``python -I -S rank_launcher.py ...``), never imported by the agent: it uses the standard
library only and must start fast.

    rank_launcher.py --cgroup-procs FILE --cwd DIR --stdout-fd N -- COMMAND [ARG]...

The launcher unshares its PID namespace and forks; the child becomes PID 1 of the new namespace,
makes itself a session leader (``setsid``), joins the rank's freezer cgroup (writing ``0`` to
``cgroup.procs``: "myself", whatever the PID namespace), switches to ``--cwd``, takes stdin from
/dev/null and stdout/stderr from fd N, restores default signal dispositions and execs COMMAND.
The launcher waits for that exec (a close-on-exec pipe tells it apart from a failure), prints the
child's PID (in the launcher's namespace) on stdout and exits: the child is then adopted by the
nearest child subreaper, the agent. No parent-death signal is set: a restored task would receive
it when CRIU exits (FINDINGS 13)."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys

CLONE_NEWPID = 0x20000000


def _parse(argv: list[str]) -> tuple[str, str, int, list[str]]:
    if "--" not in argv:
        raise SystemExit("usage: rank_launcher.py --cgroup-procs F --cwd D --stdout-fd N -- CMD")
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1 :]
    values = dict(zip(options[::2], options[1::2], strict=False))
    if not command or set(values) != {"--cgroup-procs", "--cwd", "--stdout-fd"}:
        raise SystemExit("usage: rank_launcher.py --cgroup-procs F --cwd D --stdout-fd N -- CMD")
    return values["--cgroup-procs"], values["--cwd"], int(values["--stdout-fd"]), command


def _become_rank(cgroup_procs: str, cwd: str, stdout_fd: int, command: list[str]) -> None:
    os.setsid()
    fd = os.open(cgroup_procs, os.O_WRONLY)
    try:
        os.write(fd, b"0\n")
    finally:
        os.close(fd)
    os.chdir(cwd)
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(stdout_fd, 1)
    os.dup2(stdout_fd, 2)
    for extra in {devnull, stdout_fd} - {0, 1, 2}:
        os.close(extra)
    # Python ignores SIGPIPE (and SIGXFSZ); an ignored disposition survives exec.
    for signum in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(signum, signal.SIG_DFL)
    os.execvp(command[0], command)


def main(argv: list[str]) -> int:
    cgroup_procs, cwd, stdout_fd, command = _parse(argv)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWPID) != 0:
        err = ctypes.get_errno()
        print(f"unshare(CLONE_NEWPID) failed: {os.strerror(err)}", file=sys.stderr)
        return 1
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(report_r)
        try:
            _become_rank(cgroup_procs, cwd, stdout_fd, command)
        except BaseException as exc:
            os.write(report_w, f"{type(exc).__name__}: {exc}".encode())
        os._exit(127)
    os.close(report_w)
    chunks = []
    while chunk := os.read(report_r, 4096):
        chunks.append(chunk)
    os.close(report_r)
    if chunks:
        os.waitpid(pid, 0)
        print(b"".join(chunks).decode(errors="replace"), file=sys.stderr)
        return 1
    print(json.dumps({"pid": pid}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
