"""The workload catalogue run locally, without crctl: every program's ranks start as plain
subprocesses on 127.0.0.1, must make progress with no errors, keep making it across a freeze
of a few seconds, and end with status 0 on SIGTERM, leaving no process behind. Then the checks
are shown able to fail: a fake peer sends tcp_pair a corrupted and a skipped message, a running
mmap_file and append_file have their files tampered with, and the pure checkers are fed bad
input."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from crctl import mpi
from tests.workloads import catalogue
from tests.workloads.catalogue import (
    _clients,
    _common,
    append_file,
    big_memory,
    eventfd_timerfd,
    file_locks,
    fork_tree,
    half_closed,
    inotify,
    listen_backlog,
    memcached,
    mmap_file,
    nginx_download,
    python_multiprocessing,
    signalfd,
    tcp_pair,
    threads64,
    timers_signals,
    udp_connected,
    unlinked_file,
    zombies,
)

ROOT = Path(__file__).resolve().parents[2]
LOCAL = "127.0.0.1"
QUICK_ARGS = {
    "listen_backlog": ("--backlog-hold", "0.3"),
    "big_memory": ("--memory-mib", "32"),
    "big_memory_1g": ("--memory-mib", "64"),  # 1 GiB is for the testbed
    "nginx_download": ("--file-mib", "4", "--rate-mib", "16"),
}
MPIEXEC = Path(sys.executable).with_name("mpiexec")
MIN_PROGRESS = 10
PROGRESS_PATIENCE = 30.0
EXIT_PATIENCE = 5.0
FREEZE_SECONDS = 3.0


def free_port_run(count: int) -> int:
    """A port P with P .. P+count-1 free for TCP and UDP on 127.0.0.1 (at the time of asking)."""
    while True:
        with socket.socket() as probe:
            probe.bind((LOCAL, 0))
            base = int(probe.getsockname()[1])
        if base + count > 65535:
            continue
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + count):
                    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                        sock = stack.enter_context(socket.socket(socket.AF_INET, kind))
                        sock.bind((LOCAL, port))
        except OSError:
            continue
        return base


@dataclass
class Rank:
    name: str
    rank: int
    process: subprocess.Popen[bytes]
    status_path: Path
    stderr_path: Path
    port: int  # the workload's --port

    def status(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.status_path.read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def progress(self) -> int:
        status = self.status()
        return -1 if status is None else int(status["progress"])

    def stderr_tail(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-2000:]
        except FileNotFoundError:
            return ""


def launch(
    name: str, ranks: int, tmp: Path, extra: Sequence[str] = (), only: int | None = None
) -> list[Rank]:
    """Start `name`'s ranks (or just rank `only`) as subprocesses on 127.0.0.1, as its Spec's
    user if it has one; an MPI workload's under one mpiexec. Rank R's status is
    tmp/NAME/rank-R.json and its work dir tmp/NAME/work-R (as testbed.workloads lays them out)."""
    spec = catalogue.WORKLOADS[name]
    port = free_port_run(ranks)
    home = tmp / name
    home.mkdir(exist_ok=True)
    chosen = list(range(ranks)) if only is None else [only]
    for rank in chosen:
        (home / f"work-{rank}").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    user: dict[str, Any] = {}
    if spec.user is not None:
        entry = pwd.getpwnam(spec.user)
        for path in [home, *home.iterdir()]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
        user = {
            "user": entry.pw_uid,
            "group": entry.pw_gid,
            "extra_groups": os.getgrouplist(spec.user, entry.pw_gid),
        }
        env |= {"HOME": entry.pw_dir, "USER": spec.user, "LOGNAME": spec.user}

    def start(rank: str, stderr_path: Path) -> subprocess.Popen[bytes]:
        argv = [
            sys.executable,
            "-m",
            spec.module,
            *("--rank", rank, "--ranks", str(ranks)),
            *("--addresses", ",".join([LOCAL] * ranks), "--port", str(port)),
            *("--status", str(home / f"rank-{rank}.json")),
            *("--work-dir", str(home / f"work-{rank}")),
            *extra,
        ]
        mpi_env = {}
        if spec.launcher == "mpirun":
            argv = [str(MPIEXEC), "-n", str(ranks), *argv]
            mpi_env = dict(mpi.TCP_ONLY)
        with open(stderr_path, "wb") as stderr:
            return subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env | mpi_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                **user,
            )

    if spec.launcher == "mpirun":
        stderr_path = home / "mpiexec.stderr"
        process = start("{rank}", stderr_path)
        return [Rank(name, r, process, home / f"rank-{r}.json", stderr_path, port) for r in chosen]
    started = []
    for rank in chosen:
        stderr_path = home / f"rank-{rank}.stderr"
        process = start(str(rank), stderr_path)
        started.append(Rank(name, rank, process, home / f"rank-{rank}.json", stderr_path, port))
    return started


def process_table() -> dict[int, tuple[int, str]]:
    """pid: (ppid, state) of every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def descendants(pids: Sequence[int]) -> set[int]:
    table = process_table()
    found: set[int] = set()
    frontier = set(pids)
    while frontier:
        children = {pid for pid, (ppid, _) in table.items() if ppid in frontier}
        frontier = children - found
        found |= children
    return found


def living(pids: set[int]) -> set[int]:
    table = process_table()
    return {pid for pid in pids if pid in table and table[pid][1] != "Z"}


@dataclass
class Stopped:
    exit_codes: dict[int, int | None] = field(default_factory=dict)
    left_behind: set[int] = field(default_factory=set)


def stop(ranks: Sequence[Rank]) -> Stopped:
    """SIGTERM every rank, wait for each to exit, and for its descendants to go; kill (by pid)
    whatever is still there afterwards."""
    result = Stopped()
    offspring = descendants([r.process.pid for r in ranks if r.process.poll() is None])
    signalled = set()  # an MPI job's ranks share one process, its mpiexec
    for rank in ranks:
        if rank.process.poll() is None and rank.process.pid not in signalled:
            rank.process.send_signal(signal.SIGTERM)
            signalled.add(rank.process.pid)
    deadline = time.monotonic() + EXIT_PATIENCE
    for rank in ranks:
        try:
            rank.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            rank.process.kill()
            rank.process.wait()
            result.exit_codes[rank.rank] = None
            continue
        result.exit_codes[rank.rank] = rank.process.returncode
    while living(offspring) and time.monotonic() < deadline:
        time.sleep(0.05)
    result.left_behind = living(offspring)
    for pid in result.left_behind:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return result


def mpich_segments(pids: Sequence[int]) -> set[Path]:
    """The /dev/shm segments MPICH made for these processes (a rank ended by SIGTERM without
    MPI_Finalize, or killed by mpiexec, leaves its own behind)."""
    found = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        for line in maps.splitlines():
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/dev/shm/mpich_shm_"):
                found.add(Path(fields[5]))
    return found


def freeze(pids: Sequence[int], seconds: float) -> None:
    """SIGSTOP the processes and all their descendants, wait, SIGCONT them."""
    frozen = [*pids, *descendants(pids)]
    for pid in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    time.sleep(seconds)
    for pid in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def wait_until(condition: Any, patience: float = PROGRESS_PATIENCE) -> bool:
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return bool(condition())


@contextlib.contextmanager
def running(ranks: list[Rank]) -> Iterator[list[Rank]]:
    try:
        yield ranks
    finally:
        stop(ranks)


@dataclass
class Outcome:
    first: dict[int, dict[str, Any] | None]
    second: dict[int, dict[str, Any] | None]
    stopped: Stopped
    stderr: dict[int, str]


@pytest.fixture(scope="module")
def catalogue_run() -> Iterator[dict[str, Outcome]]:
    """Every workload's ranks, all at once: statuses once every rank has MIN_PROGRESS; then
    every process is frozen for FREEZE_SECONDS (as during a checkpoint); statuses again once
    every rank has MIN_PROGRESS more; then what SIGTERM did. In a folder other users can
    enter (postgres's ranks, nginx's www-data workers), removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="crctl-catalogue-"))
    tmp.chmod(0o755)
    all_ranks: list[Rank] = []
    segments: set[Path] = set()
    try:
        for spec in local_workloads():
            extra = (*spec.extra_args, *QUICK_ARGS.get(spec.name, ()))
            all_ranks += launch(spec.name, spec.ranks, tmp, extra)
        wait_until(lambda: all(r.progress() >= MIN_PROGRESS for r in all_ranks))
        first = {(r.name, r.rank): r.status() for r in all_ranks}
        mpiexecs = {r.process.pid for r in all_ranks if launched_by_mpiexec(r)}
        segments = mpich_segments(sorted(descendants(sorted(mpiexecs))))
        freeze([r.process.pid for r in all_ranks], FREEZE_SECONDS)
        marks = {(r.name, r.rank): r.progress() for r in all_ranks}
        wait_until(
            lambda: all(r.progress() >= marks[r.name, r.rank] + MIN_PROGRESS for r in all_ranks)
        )
        second = {(r.name, r.rank): r.status() for r in all_ranks}
        outcomes = {}
        for name in (spec.name for spec in local_workloads()):
            ranks = [r for r in all_ranks if r.name == name]
            outcomes[name] = Outcome(
                first={r.rank: first[name, r.rank] for r in ranks},
                second={r.rank: second[name, r.rank] for r in ranks},
                stopped=stop(ranks),
                stderr={r.rank: r.stderr_tail() for r in ranks},
            )
        yield outcomes
    finally:
        stop(all_ranks)
        shutil.rmtree(tmp, ignore_errors=True)
        for segment in segments:
            segment.unlink(missing_ok=True)


def local_workloads() -> list[catalogue.Spec]:
    """The workloads this test can run: all as root; as anyone else, those with no user of
    their own."""
    root = os.geteuid() == 0
    return [s for s in catalogue.WORKLOADS.values() if root or s.user in (None, current_user())]


def current_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def launched_by_mpiexec(rank: Rank) -> bool:
    return catalogue.WORKLOADS[rank.name].launcher == "mpirun"


@pytest.mark.parametrize("name", sorted(catalogue.WORKLOADS))
def test_workload_progresses_without_errors_and_ends_on_sigterm(
    name: str, catalogue_run: dict[str, Outcome]
) -> None:
    spec = catalogue.WORKLOADS[name]
    if name not in catalogue_run:
        pytest.skip(f"{name} runs as user {spec.user}: switching to it needs root")
    outcome = catalogue_run[name]
    for rank in range(spec.ranks):
        first, second = outcome.first[rank], outcome.second[rank]
        context = f"{name} rank {rank}; stderr:\n{outcome.stderr[rank]}"
        assert first is not None and second is not None, context
        assert (first["workload"], first["rank"]) == (spec.program or name, rank), context
        assert second["errors"] == [], context
        assert first["progress"] >= MIN_PROGRESS, context
        assert second["progress"] >= first["progress"] + MIN_PROGRESS, context
        assert outcome.stopped.exit_codes[rank] == 0, context
    assert outcome.stopped.left_behind == set()


def test_the_registry_names_every_program_in_the_catalogue() -> None:
    folder = Path(catalogue.__file__).parent
    programs = {p.stem for p in folder.glob("*.py") if not p.stem.startswith("_")}
    assert programs == {spec.program or spec.name for spec in catalogue.WORKLOADS.values()}
    assert len(catalogue.WORKLOADS) >= 31
    for spec in catalogue.WORKLOADS.values():
        assert spec.ranks in (1, 2) and spec.covers
        assert spec.program is None or spec.program in catalogue.WORKLOADS
        assert spec.user is None or pwd.getpwnam(spec.user)


# The checks can fail: live programs fed bad data.


def errors_of(rank: Rank) -> list[str]:
    status = rank.status()
    return [] if status is None else list(status["errors"])


def test_tcp_pair_reports_a_corrupted_and_a_skipped_answer(tmp_path: Path) -> None:
    port = free_port_run(2)
    listener = _common.listen_tcp(LOCAL, port)
    listener.settimeout(PROGRESS_PATIENCE)
    with running(launch_at("tcp_pair", 2, tmp_path, port, only=1)) as (client,), listener:
        sock, _ = listener.accept()
        with sock:
            sock.settimeout(10)
            for _ in range(3):
                _common.recv_frame(sock)
            corrupted = bytearray(_common.make_message(tcp_pair.ANSWER, 0))
            corrupted[-1] ^= 0xFF
            sock.sendall(_common.frame(bytes(corrupted)))
            sock.sendall(_common.frame(_common.make_message(tcp_pair.ANSWER, 2)))
            assert wait_until(lambda: len(errors_of(client)) >= 2, 10), client.stderr_tail()
    problems = errors_of(client)
    assert "corrupted" in problems[0]
    assert "expected message 1, got 2" in problems[1]


def launch_at(name: str, ranks: int, tmp: Path, port: int, only: int) -> list[Rank]:
    """Like launch, with a given port (a fake peer in the test owns the other rank's)."""
    work_dir = tmp / f"{name}-{only}"
    work_dir.mkdir()
    argv = [
        sys.executable,
        "-m",
        catalogue.WORKLOADS[name].module,
        *("--rank", str(only), "--ranks", str(ranks), "--port", str(port)),
        *("--addresses", ",".join([LOCAL] * ranks)),
        *("--status", str(tmp / "status.json"), "--work-dir", str(work_dir)),
    ]
    stderr_path = tmp / "stderr"
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=stderr
        )
    return [Rank(name, only, process, tmp / "status.json", stderr_path, port)]


def test_mmap_file_reports_a_counter_it_did_not_write(tmp_path: Path) -> None:
    with running(launch("mmap_file", 1, tmp_path)) as (rank,):
        assert wait_until(lambda: rank.progress() >= MIN_PROGRESS), rank.stderr_tail()
        fd = os.open(tmp_path / "mmap_file" / "work-0" / "mapped", os.O_RDWR)
        try:
            for _ in range(20):  # the parent may overwrite one in the instant after it lands
                os.pwrite(fd, struct.pack("!q", 10**9), 0)
                if wait_until(lambda: errors_of(rank) != [], 0.2):
                    break
        finally:
            os.close(fd)
        assert any("expected message 1000000000" in e for e in errors_of(rank)), errors_of(rank)


def test_append_file_reports_lines_it_did_not_write(tmp_path: Path) -> None:
    with running(launch("append_file", 1, tmp_path)) as (rank,):
        assert wait_until(lambda: rank.progress() >= MIN_PROGRESS), rank.stderr_tail()
        with open(tmp_path / "append_file" / "work-0" / "appended.log", "ab") as log:
            log.write(b"999999\n")
        assert wait_until(lambda: errors_of(rank) != [], 5)
        assert "are missing" in errors_of(rank)[0]


def test_redis_reports_a_counter_someone_else_changed(tmp_path: Path) -> None:
    ranks = launch("redis", 2, tmp_path)
    with running(ranks):
        assert wait_until(lambda: ranks[0].progress() >= MIN_PROGRESS), ranks[0].stderr_tail()
        with _common.connect_tcp(LOCAL, ranks[0].port) as sock:
            assert isinstance(_clients.Resp(sock).call("INCRBY", "r0:counter", 5), int)
        assert wait_until(lambda: errors_of(ranks[0]) != [], 5), ranks[0].stderr_tail()
    assert "INCR r0:counter: expected" in errors_of(ranks[0])[0]
    assert errors_of(ranks[1]) == []


# The checks can fail: the pure checkers fed bad input.


def test_check_message_tells_corruption_from_loss_and_repetition() -> None:
    message = _common.make_message(b"t", 5)
    assert _common.check_message(message, b"t", 5) is None
    flipped = bytearray(message)
    flipped[20] ^= 1
    assert "corrupted" in str(_common.check_message(bytes(flipped), b"t", 5))
    assert "lost" in str(_common.check_message(message, b"t", 4))
    assert "repeated" in str(_common.check_message(message, b"t", 6))
    assert "wrong content" in str(_common.check_message(message, b"other", 5))
    assert "shorter" in str(_common.check_message(b"x", b"t", 5))


def test_frame_reader_reassembles_frames_split_anywhere() -> None:
    stream = _common.frame(b"one") + _common.frame(b"") + _common.frame(b"three")
    reader = _common.FrameReader()
    frames = [f for i in range(len(stream)) for f in reader.feed(stream[i : i + 1])]
    assert frames == [b"one", b"", b"three"]
    with pytest.raises(ValueError):
        reader.feed(struct.pack("!I", _common.MAX_FRAME + 1))


def test_threads64_sees_a_counter_go_back_and_a_lost_update() -> None:
    assert threads64.check_counters([1, 2], [1, 3], 4) == []
    assert threads64.check_counters([1, 2], [0, 3], 3) == [
        "thread 0: counter went back from 1 to 0"
    ]
    assert "add up to 4" in threads64.check_counters([1, 2], [1, 3], 5)[0]


def test_append_file_counts_a_previous_life_but_not_lost_lines() -> None:
    checker = append_file.AppendChecker()
    assert checker.check(b"1\n2\n3\n", 3) == []
    # restored from a checkpoint at 2 after the first life wrote 3 and 4: a new life at 3
    restored = append_file.AppendChecker()
    restored.check(b"1\n2\n", 2)
    assert restored.check(b"3\n4\n3\n", 3) == []
    assert restored.lives == 2
    assert checker.check(b"5\n", 5) == ["lines 4..4 are missing"]
    assert checker.check(b"6\n", 7) == ["the file ends at line 6, this process wrote 7"]
    assert "unreadable" in checker.check(b"x\n8\n", 8)[0]
    assert checker.check(b"9", 8) == []  # a partial line waits for its newline...
    assert checker.check(b"9\n", 9) == []  # ...and is read again from the same offset


def test_udp_matcher_rejects_duplicates_corruption_and_old_datagrams() -> None:
    pongs = udp_connected.Matcher(b"pong")
    assert pongs.check(udp_connected.datagram(b"pong", 0, 0), newest_allowed=0) is None
    assert pongs.check(udp_connected.datagram(b"pong", 0, 1), newest_allowed=1) is None
    assert "twice" in str(pongs.check(udp_connected.datagram(b"pong", 0, 1)))
    assert "newer" in str(pongs.check(udp_connected.datagram(b"pong", 5, 0), newest_allowed=1))
    for seq in range(1, 20):
        assert pongs.check(udp_connected.datagram(b"pong", seq, 0)) is None
    assert "reordered" in str(pongs.check(udp_connected.datagram(b"pong", 2, 1)))
    damaged = bytearray(udp_connected.datagram(b"pong", 20, 0))
    damaged[-1] ^= 1
    assert "corrupted" in str(pongs.check(bytes(damaged)))


def test_fork_tree_report_checks() -> None:
    child = fork_tree.Expected("session-child", 100, False, True, next_seq=3)
    assert fork_tree.check_report("3 100 100 100", child, 1, 1) is None
    assert "sid 1, expected 100" in str(fork_tree.check_report("3 100 100 1", child, 1, 1))
    assert "report 4, expected 3" in str(fork_tree.check_report("4 100 100 100", child, 1, 1))
    plain = fork_tree.Expected("plain-child", 7, False, False)
    assert "pgid 7, expected 1" in str(fork_tree.check_report("0 7 7 1", plain, 1, 1))
    assert fork_tree.resync("garbage", 4) == 5 and fork_tree.resync("9 1 1 1", 4) == 10


def test_zombie_status_checks() -> None:
    assert zombies.check_reaped(41 << 8, "exit 41") is None
    assert "exit 42" in str(zombies.check_reaped(42 << 8, "exit 41"))
    assert (
        zombies.check_reaped(int(signal.SIGUSR2), f"killed by signal {int(signal.SIGUSR2)}") is None
    )
    assert zombies.describe(os.CLD_KILLED, 12) == "killed by signal 12"


def test_big_memory_notices_a_changed_page() -> None:
    memory = big_memory.Memory(1)
    assert all(memory.check(i) is None for i in range(memory.pages))
    memory.data[5 * big_memory.PAGE + 100] ^= 0xFF
    assert "page 5" in str(memory.check(5))
    memory.write(5, 1)
    assert memory.check(5) is None


def test_other_checkers_reject_bad_input() -> None:
    assert half_closed.check_block(half_closed.BLOCK) is None
    assert half_closed.check_block(half_closed.BLOCK[:-1]) is not None
    good = [listen_backlog.greeting(i) for i in range(listen_backlog.CONNECTIONS)]
    assert listen_backlog.check_greetings(good) == []
    assert listen_backlog.check_greetings(good[:-1] + good[:1]) != []
    expected = [(1, inotify.IN_MODIFY), (1, inotify.IN_CLOSE_WRITE)]
    assert inotify.check_cycle(expected, 1, inotify.record(3), 3) == []
    assert len(inotify.check_cycle(expected[1:], 1, inotify.record(2), 3)) == 2
    assert timers_signals.check_delivered(4, 5) is None
    assert timers_signals.check_delivered(4, 4) is not None
    assert timers_signals.check_queued([None] * 4, 1) is not None
    assert mmap_file.check_file(b"x", b"x", 0) is not None
    assert eventfd_timerfd.check_drained(12, 12) is None
    assert eventfd_timerfd.check_drained(None, 12) is not None


def test_the_clients_parse_replies_and_refuse_garbage() -> None:
    left, right = socket.socketpair()
    with left, right:
        resp = _clients.Resp(left)
        right.sendall(b"*3\r\n$3\r\nabc\r\n:-7\r\n*-1\r\n-ERR wrong type\r\n$-1\r\n+OK\r\n")
        assert resp.reply() == [b"abc", -7, None]
        assert resp.reply() == _clients.RespError("ERR wrong type")
        assert resp.reply() is None and resp.reply() == "OK"
        right.sendall(b"?what\r\n")
        with pytest.raises(_clients.ProtocolError):
            resp.reply()
        memcache = _clients.Memcache(left)
        right.sendall(b"VALUE k 3 2 99\r\nhi\r\nEND\r\nVALUE other 0 1 1\r\nx\r\nEND\r\n")
        assert memcache.gets("k") == (b"hi", 3, 99)
        with pytest.raises(_clients.ProtocolError):
            memcache.gets("k")
        right.sendall(b"HTTP/1.1 206 Partial\r\nContent-Length: 12\r\nETag: x\r\n\r\n")
        head = _clients.http_head(_clients.Stream(left))
        assert (head.status, head.content_length, head.headers["etag"]) == (206, 12, "x")
    left, right = socket.socketpair()
    with left:
        right.close()
        with pytest.raises(_clients.ProtocolError, match="closed"):
            _clients.Stream(left).readline()


def test_new_checkers_reject_bad_input(tmp_path: Path) -> None:
    item = (b"value", 7)
    assert memcached.check_gets((b"value", 7, 1), "k", item) is None
    assert "flags 8" in str(memcached.check_gets((b"value", 8, 1), "k", item))
    assert "nothing" in str(memcached.check_gets(None, "k", item))
    assert "expected none" in str(memcached.check_gets((b"value", 7, 1), "k", None))
    piece = nginx_download.pattern(10_000, 20_000)
    assert nginx_download.check_piece(piece, 10_000) is None
    assert "offset 14096" in str(nginx_download.check_piece(piece, 10_000 + 4096))
    damaged = bytearray(piece)
    damaged[9000] ^= 1
    assert "offset 18192" in str(nginx_download.check_piece(bytes(damaged), 10_000))
    assert unlinked_file.check_record(unlinked_file.record(3, 5), 3, 5) is None
    assert "expected message 6, got 5" in str(
        unlinked_file.check_record(unlinked_file.record(3, 5), 3, 6)
    )
    assert unlinked_file.check_record(unlinked_file.record(4, 5), 3, 5) is not None
    own, child = 100, 200
    checker = signalfd.Checker(own, child)
    usr2 = signalfd.Received(signal.SIGUSR2, signalfd.SI_USER, own, 0)
    queued = [signalfd.Received(signalfd.QUEUED, signalfd.SI_QUEUE, child, v) for v in (0, 1)]
    assert checker.check([*queued, usr2], {signal.SIGUSR2}) == []
    gap = signalfd.Received(signalfd.QUEUED, signalfd.SI_QUEUE, child, 3)
    assert checker.check([gap, usr2], {signal.SIGUSR2}) == ["queued value 3, expected 2"]
    assert len(checker.check([], set())) == 2  # SIGUSR2 neither pending nor read
    stranger = signalfd.Received(signal.SIGUSR1, signalfd.SI_USER, 300, 0)
    assert "not the child" in checker.check([stranger, usr2], {signal.SIGUSR2})[0]
    outstanding = {1: 0, 2: 0}
    good = python_multiprocessing.task(1)
    assert python_multiprocessing.check_result(good, outstanding, own=-1) is None
    assert "not outstanding" in str(python_multiprocessing.check_result(good, outstanding, -1))
    assert "checksum" in str(python_multiprocessing.check_result((2, 0, 5), outstanding, -1))
    for name in ("flock.lock", "ofd.lock", "records.lock"):
        (tmp_path / name).write_bytes(bytes(file_locks.RANGES * file_locks.RANGE))
    assert file_locks.probe(tmp_path) == "flock=free ofd=None ranges="
    assert file_locks.probe(tmp_path) != file_locks.expected_probe(own, {1, 2})
