"""The agent's CRIU engine and rank runtime, end to end: real CRIU, real ranks (each the init of
its own PID namespace, in its own freezer cgroup) in two emulated hosts of their own, on a
private bridge and subnet that do not clash with a running ``crctl testbed``."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from agent import criu, images, ranks, reaper, restoring
from agent.freezer import FreezerHierarchy
from agent.ranks import RankProcess
from agent.reaper import PinnedProcess
from crctl.errors import CrctlError, CriuError
from testbed import netns, procs

pytestmark = pytest.mark.e2e

WORKLOAD = Path(__file__).resolve().parents[1] / "workloads" / "echo.py"
PORT = 7100
TEST_TIMEOUT = 120.0


@dataclass(frozen=True)
class Host:
    namespace: str
    address: str

    @property
    def netns(self) -> Path:
        return netns.netns_path(self.namespace)


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[Host, Host]]:
    """Two network namespaces on a bridge of their own, removed afterwards."""
    token = f"{os.getpid() % 100000:05d}"
    subnet = ipaddress.IPv4Network(f"198.19.{os.getpid() % 200 + 20}.0/24")
    bridge = f"crtbr{token}"
    made: list[tuple[str, str]] = []
    try:
        netns.create_bridge(bridge, subnet)
        for index, suffix in enumerate("ab", start=1):
            namespace, veth = f"crt-{token}-{suffix}", f"crtv{token}{suffix}"
            made.append((namespace, veth))
            netns.create_host(namespace, veth, bridge, netns.host_address(index, subnet), subnet)
        yield (
            Host(made[0][0], str(netns.host_address(1, subnet))),
            Host(made[1][0], str(netns.host_address(2, subnet))),
        )
    finally:
        for namespace, veth in made:
            # Only this module's ranks ever ran in these fresh namespaces.
            for pid in netns.pids_in(namespace):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            netns.delete_namespace(namespace)
            netns.delete_link(veth)
        netns.delete_link(bridge)


@dataclass
class Job:
    """One test's ranks: their job name, directories, and every process started for them, so
    that teardown can kill what is left (by PID and start time) and remove the cgroups."""

    name: str
    root: Path
    freezer: FreezerHierarchy
    started: list[procs.ProcessRef] = field(default_factory=list)
    processes: list[RankProcess] = field(default_factory=list)

    def status_file(self, rank: str) -> Path:
        return self.root / f"{rank}.status.json"

    def log_file(self, rank: str) -> Path:
        return self.root / "logs" / f"{rank}.log"

    def track(self, process: RankProcess) -> RankProcess:
        self.processes.append(process)
        ref = procs.ProcessRef(process.pid, procs.start_ticks(process.pid) or 0)
        self.started.append(ref)
        return process

    async def launch(self, rank: str, host: Host, *args: str) -> RankProcess:
        argv = [sys.executable, str(WORKLOAD), *args, "--status", str(self.status_file(rank))]
        # A cwd per rank, as the agent gives them: CRIU's parasite mounts /proc at
        # <cwd>/proc.crtools, so two dumps at once in one cwd collide (EEXIST).
        cwd = self.root / "ranks" / rank
        cwd.mkdir(parents=True, exist_ok=True)
        process = await ranks.launch(
            self.name,
            rank,
            argv,
            work_dir=cwd,
            log_path=self.log_file(rank),
            netns=host.netns,
            freezer=self.freezer,
        )
        return self.track(process)

    def restore_pipe(self, rank: str, old: RankProcess) -> ranks.RestorePipe:
        """A fresh stdout pipe for a restore of ``old``, into the same log."""
        return ranks.prepare_restore(
            self.name, rank, stdout_key=old.stdout_key, log_path=old.log_path, freezer=self.freezer
        )

    async def restore(
        self, rank: str, old: RankProcess, images: Path, host: Host, *, hold: bool = True
    ) -> RankProcess:
        """Restore a rank with a fresh stdout pipe into the same log, adopted at post-restore
        then released (or a plain restore when ``hold`` is False)."""
        pipe = self.restore_pipe(rank, old)
        spec = criu.RestoreSpec(
            images_dir=images,
            work_dir=self.root / f"restore-{rank}",
            inherit_fds=pipe.inherit_fds,
            netns=host.netns,
        )
        if not hold:
            result = await criu.restore(spec)
            return self.track(pipe.adopt(result.pid))
        held = await criu.start_restore(spec)
        try:
            pid = await held.held()
            process = self.track(pipe.adopt(pid))
            await held.release()
        except BaseException:
            await held.abort()
            pipe.discard()
            raise
        return process

    async def aclose(self) -> None:
        for process in self.processes:
            if not process.exited:
                process.kill()
                await asyncio.wait_for(process.wait(), 10)
            process.close()

    def cleanup(self) -> None:
        for ref in self.started:
            procs.kill(ref)
        job_dir = self.freezer.root / "crctl" / self.name
        for rank_dir in sorted(job_dir.glob("*")) if job_dir.exists() else []:
            if rank_dir.is_dir():
                self.freezer.open(self.name, rank_dir.name).remove(wait=5.0)


@pytest.fixture
def job(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Job]:
    name = f"t{os.getpid() % 100000}-{re.sub(r'[^a-z0-9]', '', request.node.name[5:])[:40]}"
    (tmp_path / "logs").mkdir()
    the_job = Job(name=name, root=tmp_path, freezer=FreezerHierarchy.detect())
    try:
        yield the_job
    finally:
        the_job.cleanup()


def run(coro: Coroutine[Any, Any, None]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, TEST_TIMEOUT)

    asyncio.run(bounded())


def status(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return {"count": 0, "errors": []}
    return data


async def progress_beyond(path: Path, count: int, timeout: float = 20.0) -> int:
    """Wait until the workload's count passes ``count``, failing on any recorded error."""
    deadline = time.monotonic() + timeout
    while True:
        current = status(path)
        assert current["errors"] == [], f"workload reported errors: {current['errors']}"
        if current["count"] > count:
            return int(current["count"])
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name}: count stuck at {current['count']} (<= {count})")
        await asyncio.sleep(0.02)


async def assert_still(path: Path, seconds: float = 0.3) -> int:
    """The workload makes no progress for ``seconds`` (it is frozen or dead)."""
    before = status(path)["count"]
    await asyncio.sleep(seconds)
    after = status(path)["count"]
    assert after == before, f"{path.name} progressed while it should be stopped ({before}->{after})"
    return int(after)


def criu_locks(host: Host) -> list[str]:
    """CRIU's network locks in a host: its nftables tables and its iptables rules (either
    method, whatever the dumps asked for)."""

    def run_in_host(*argv: str) -> str:
        return subprocess.run(
            [*netns.nsenter_prefix(host.namespace), *argv],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    tables = [
        line.split()[-1]
        for line in run_in_host("nft", "list", "tables").splitlines()
        if " CRIU-" in line
    ]
    rules = [line for line in run_in_host("iptables", "-S").splitlines() if "0xc114" in line]
    return tables + rules


def logged_progress(log_path: Path) -> list[int]:
    return [int(n) for n in re.findall(r"^progress (\d+)$", log_path.read_text(), re.M)]


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def is_child_of_us(pid: int) -> bool:
    return parent_of(pid) == os.getpid()


def _describe(pid: int) -> str:
    """A leftover process's name, state, parent and threads, for a failure message."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return f"{pid}: gone"
    keep = ("Name:", "State:", "Tgid:", "PPid:", "Threads:")
    return f"{pid}: " + ", ".join(
        " ".join(line.split()) for line in status if line.startswith(keep)
    )


def our_children(*, zombies: bool, comm: str | None = None) -> list[int]:
    """Children of this process that exited and were not reaped (``zombies``), or that still
    run; only those named ``comm`` if given."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(ppid) != os.getpid() or (state == "Z") != zombies:
            continue
        if comm is None or name == comm:
            found.append(int(entry.name))
    return found


def our_zombies() -> list[int]:
    """Children of this process that exited and were not reaped."""
    return our_children(zombies=True)


async def start_pair(job: Job, a: Host, b: Host) -> tuple[RankProcess, RankProcess]:
    """An echo server on host a and a client on host b, already exchanging."""
    server = await job.launch("server", a, "server", "--bind", a.address, "--port", str(PORT))
    client = await job.launch("client", b, "client", "--connect", a.address, "--port", str(PORT))
    await progress_beyond(job.status_file("client"), 50)
    return server, client


async def restore_pair_held(
    job: Job,
    server: RankProcess,
    client: RankProcess,
    a: Host,
    b: Host,
    images: Callable[[str], Path],
) -> tuple[dict[str, criu.HeldRestore], dict[str, RankProcess]]:
    """Restore both ends of the pair (server on host a, client on host b) from ``images(side)``
    with fresh stdout pipes, held at post-restore and adopted; the caller releases them."""
    pipes = {
        side: job.restore_pipe(side, p) for side, p in (("server", server), ("client", client))
    }
    restores = {
        side: await criu.start_restore(
            criu.RestoreSpec(
                images_dir=images(side),
                work_dir=job.root / f"rst-{side}",
                inherit_fds=pipes[side].inherit_fds,
                netns=host.netns,
            )
        )
        for side, host in (("server", a), ("client", b))
    }
    pids = await asyncio.gather(*(r.held() for r in restores.values()))
    restored = {
        side: job.track(pipes[side].adopt(pid)) for side, pid in zip(restores, pids, strict=True)
    }
    return restores, restored


def dump_spec(process: RankProcess, host: Host, images: Path, **kw: Any) -> criu.DumpSpec:
    return criu.DumpSpec(
        pid=process.pid,
        images_dir=images,
        netns=host.netns,
        freeze_cgroup=process.cgroup.path,
        **kw,
    )


async def hold_pair(
    job: Job, a: Host, b: Host, **kw: Any
) -> tuple[RankProcess, RankProcess, list[criu.HeldDump]]:
    """The pair started, both ends dumped and held at post-dump (tasks frozen, images written)."""
    server, client = await start_pair(job, a, b)
    dumps = [
        await criu.start_dump(dump_spec(server, a, job.root / "img-server", **kw)),
        await criu.start_dump(dump_spec(client, b, job.root / "img-client", **kw)),
    ]
    await asyncio.gather(*(d.held() for d in dumps))
    return server, client, dumps


def test_ranks_run_as_pid_namespace_inits_in_their_cgroup_adopted_by_us(
    hosts: tuple[Host, Host], job: Job
) -> None:
    """A launched rank's init (tini) is PID 1 of its own namespace, its command the init's
    child, both in its freezer cgroup and its host's network namespace; the init is the
    agent's child (subreaper), passes a SIGTERM on to the command, and the command's exit
    status reaches the agent."""
    a, _ = hosts

    async def scenario() -> None:
        try:
            rank = await job.launch("ticker", a, "ticker")
            assert rank.ns_pid == 1
            assert Path(f"/proc/{rank.pid}/exe").resolve() == Path("/usr/bin/tini")
            assert rank.command_pid != rank.pid
            assert sorted(rank.cgroup.pids()) == sorted([rank.pid, rank.command_pid])
            assert is_child_of_us(rank.pid)
            assert os.stat(f"/proc/{rank.pid}/ns/net").st_ino == os.stat(a.netns).st_ino
            assert rank.stdout_key == f"pipe:[{rank.pipe_inode}]"
            await progress_beyond(job.status_file("ticker"), 40)
            assert logged_progress(rank.log_path)[:2] == [20, 40]
            os.kill(rank.pid, signal.SIGTERM)  # tini passes it on: the ticker ends
            assert await rank.wait() == 128 + signal.SIGTERM
            assert not rank.kill()
        finally:
            await job.aclose()

    run(scenario())


def test_a_rank_that_cannot_start_fails_the_launch_with_the_reason(
    hosts: tuple[Host, Host], job: Job
) -> None:
    """A command that cannot be executed fails launch() with the exec error, and leaves no
    process and no cgroup behind."""
    a, _ = hosts

    async def scenario() -> None:
        with pytest.raises(CrctlError, match="command not found or not executable"):
            await ranks.launch(
                job.name,
                "broken",
                ["/nonexistent/command"],
                work_dir=job.root,
                netns=a.netns,
                freezer=job.freezer,
            )
        assert not job.freezer.rank_path(job.name, "broken").exists()
        assert our_zombies() == []

    run(scenario())


def test_aborted_dump_resumes_the_pair_with_no_error(hosts: tuple[Host, Host], job: Job) -> None:
    """Both ends held at post-dump (frozen, images written), then aborted: CRIU rolls back and
    the pair keeps exchanging with no error; no CRIU lock is left behind."""
    a, b = hosts

    async def scenario() -> None:
        try:
            server, client, dumps = await hold_pair(job, a, b)
            assert (job.root / "img-client" / "pstree.img").exists()
            frozen_at = await assert_still(job.status_file("client"))
            await asyncio.gather(*(d.abort() for d in dumps))
            await progress_beyond(job.status_file("client"), frozen_at + 100)
            assert not server.exited and not client.exited
            assert criu_locks(a) == [] and criu_locks(b) == []
            # A decision after the fact is harmless; a commit after an abort is refused.
            await dumps[0].abort()
            with pytest.raises(CriuError, match="aborted"):
                await dumps[0].commit()
        finally:
            await job.aclose()

    run(scenario())


def test_committed_dump_with_leave_running_keeps_the_pair_running(
    hosts: tuple[Host, Host], job: Job
) -> None:
    """Held then committed with leave_running: full images exist (TCP streams included) and
    the pair goes on with no error."""
    a, b = hosts

    async def scenario() -> None:
        try:
            server, client, dumps = await hold_pair(job, a, b, leave_running=True)
            frozen_at = await assert_still(job.status_file("client"))
            results = await asyncio.gather(*(d.commit() for d in dumps))
            assert all(r.left_running for r in results)
            for side in ("server", "client"):
                images = job.root / f"img-{side}"
                for name in ("inventory.img", "pstree.img", "files.img"):
                    assert (images / name).exists(), f"{side}: no {name}"
                assert list(images.glob("tcp-stream-*.img")), f"{side}: no TCP stream image"
            await progress_beyond(job.status_file("client"), frozen_at + 100)
            assert not server.exited and not client.exited
            assert criu_locks(a) == [] and criu_locks(b) == []
        finally:
            await job.aclose()

    run(scenario())


def test_dump_waiting_at_pre_dump_leaves_the_tasks_alone_until_it_proceeds(
    hosts: tuple[Host, Host], job: Job
) -> None:
    """With wait_at_pre_dump, CRIU starts and waits before touching the tasks: the pair keeps
    exchanging, nothing is written; after proceed() it dumps and holds as usual. An abort at
    the gate ends CRIU with the tasks never stopped."""
    a, b = hosts

    async def scenario() -> None:
        try:
            server, client = await start_pair(job, a, b)
            gated = await criu.start_dump(
                dump_spec(client, b, job.root / "img-gated", wait_at_pre_dump=True)
            )
            await gated.ready()
            before = status(job.status_file("client"))["count"]
            await progress_beyond(job.status_file("client"), before + 30)
            assert not (job.root / "img-gated" / "pstree.img").exists()
            gated.proceed()
            await gated.held()
            assert (job.root / "img-gated" / "pstree.img").exists()
            frozen_at = await assert_still(job.status_file("client"))
            await gated.abort()
            await progress_beyond(job.status_file("client"), frozen_at + 30)

            refused = await criu.start_dump(
                dump_spec(client, b, job.root / "img-refused", wait_at_pre_dump=True)
            )
            await refused.ready()
            await refused.abort()
            assert refused.finished
            with pytest.raises(CriuError):
                await refused.held()
            assert not (job.root / "img-refused" / "pstree.img").exists()
            await progress_beyond(job.status_file("client"), frozen_at + 60)
            assert not server.exited and not client.exited
            assert criu_locks(a) == [] and criu_locks(b) == []
        finally:
            await job.aclose()

    run(scenario())


def test_killed_pair_restored_in_place_continues_and_keeps_logging(
    hosts: tuple[Host, Host], job: Job
) -> None:
    """Dump and commit (tasks killed; their connections stay locked), restore both where they
    were, held at post-restore (nothing runs), then released: the exchange continues with no
    error, the locks are gone, the restored roots are our children again and in their
    (re-created) cgroups, and the client's stdout keeps flowing into the same log through a
    new pipe."""
    a, b = hosts

    async def scenario() -> None:
        try:
            server, client, dumps = await hold_pair(job, a, b)
            results = await asyncio.gather(*(d.commit() for d in dumps))
            # The dumps leave their connections locked, each in one table that they name.
            assert criu_locks(a) == [results[0].lock_table]
            assert criu_locks(b) == [results[1].lock_table]
            assert await server.wait() == -signal.SIGKILL
            assert await client.wait() == -signal.SIGKILL
            dumped_at = await assert_still(job.status_file("client"))
            logged_before = logged_progress(client.log_path)
            for process in (server, client):  # as the agent does once a rank has exited
                process.cgroup.remove()

            restores, restored = await restore_pair_held(
                job, server, client, a, b, lambda side: job.root / f"img-{side}"
            )
            await assert_still(job.status_file("client"))
            await asyncio.gather(*(r.release() for r in restores.values()))

            await progress_beyond(job.status_file("client"), dumped_at + 100)
            for side, process in restored.items():
                assert process.ns_pid == 1, side
                assert is_child_of_us(process.pid), side
                assert sorted(process.cgroup.pids()) == sorted(
                    [process.pid, process.command_pid]
                ), side
            assert criu_locks(a) == [] and criu_locks(b) == []
            await asyncio.sleep(0.3)
            logged_after = logged_progress(client.log_path)
            assert logged_after[: len(logged_before)] == logged_before
            assert logged_after[-1] > dumped_at, "the restored client's output is not logged"
            every = list(range(20, logged_after[-1] + 1, 20))
            assert logged_after == every, "log lines lost or repeated"
            assert restored["client"].kill()
            assert await restored["client"].wait() == -signal.SIGKILL
        finally:
            await job.aclose()

    run(scenario())


def nft_in_host(host: Host, script: str) -> None:
    subprocess.run(
        [*netns.nsenter_prefix(host.namespace), "nft", "-f", "-"],
        input=script,
        text=True,
        check=True,
    )


def test_bytes_in_flight_at_the_dump_are_handed_to_the_receiver(
    hosts: tuple[Host, Host], job: Job
) -> None:
    """The server's host drops what the server sends while both run on: its reply to the
    client's last request stays unsent, the acknowledgement of that request is lost, so each
    end holds bytes its peer has or should have. Then both are dumped. In working copies the
    reply moves into the client's receive queue, and both send queues drop what the other end
    now has (nothing left to send again); restored from them, the pair goes on with every reply
    checked (a request or reply lost or delivered twice would show)."""
    a, b = hosts
    table = f"crtest{os.getpid()}"

    async def scenario() -> None:
        try:
            server, client = await start_pair(job, a, b)
            nft_in_host(
                a,
                f"table inet {table} {{ chain out {{ type filter hook output priority 0; "
                f"tcp sport {PORT} drop; }}; }}",
            )
            stuck_at = await assert_still(job.status_file("client"), 0.3)
            dumps = [
                await criu.start_dump(dump_spec(server, a, job.root / "img-server")),
                await criu.start_dump(dump_spec(client, b, job.root / "img-client")),
            ]
            await asyncio.gather(*(d.held() for d in dumps))
            await asyncio.gather(*(d.commit() for d in dumps))
            await asyncio.gather(server.wait(), client.wait())
            nft_in_host(a, f"delete table inet {table}")
            for process in (server, client):
                process.cgroup.remove()

            originals = {side: job.root / f"img-{side}" for side in ("server", "client")}
            ends = images.connection_ends({originals["server"]: "a", originals["client"]: "b"})
            handed = {}
            for side, original in originals.items():
                images.make_working_copy(original, job.root / f"wc-{side}")
                handed[side] = images.hand_over_in_flight(job.root / f"wc-{side}", original, ends)
            line = len(f"{stuck_at + 1} {'x' * 32}\n")
            # the server's reply (its send was refused: never sent) and the client's request
            # (received, its acknowledgement lost)
            assert [(h.received, h.dropped) for h in handed["server"]] == [(0, line)]
            assert [(h.received, h.dropped) for h in handed["client"]] == [(line, line)]

            restores, _ = await restore_pair_held(
                job, server, client, a, b, lambda side: job.root / f"wc-{side}"
            )
            await asyncio.gather(*(r.release() for r in restores.values()))
            await progress_beyond(job.status_file("client"), stuck_at + 50)
        finally:
            subprocess.run(
                [*netns.nsenter_prefix(a.namespace), "nft", "delete", "table", "inet", table],
                capture_output=True,
                check=False,
            )
            await job.aclose()

    run(scenario())


def test_rank_without_tcp_restores_into_another_namespace(
    hosts: tuple[Host, Host], job: Job
) -> None:
    """A plain dump (no hold) on host a, a plain restore on host b: the rank runs in b's
    network namespace and goes on logging into the same file. Then back again to a: the
    restored incarnation's own pipe is the one named in its checkpoint."""
    a, b = hosts

    async def scenario() -> None:
        try:
            current = await job.launch("ticker", a, "ticker")
            for hop, (source, target) in enumerate([(a, b), (b, a)]):
                await progress_beyond(job.status_file("ticker"), 40 * (hop + 1))
                images = job.root / f"img-{hop}"
                result = await criu.dump(dump_spec(current, source, images))
                assert not result.left_running
                assert await current.wait() == -signal.SIGKILL
                dumped_at = await assert_still(job.status_file("ticker"))

                moved = await job.restore("ticker", current, images, target, hold=False)
                assert moved.stdout_key != current.stdout_key
                net = os.stat(f"/proc/{moved.pid}/ns/net").st_ino
                assert net == os.stat(target.netns).st_ino
                await progress_beyond(job.status_file("ticker"), dumped_at + 60)
                await asyncio.sleep(0.2)
                logged = logged_progress(moved.log_path)
                assert logged[-1] > dumped_at, f"hop {hop}: the restored output is not logged"
                every = list(range(20, logged[-1] + 1, 20))
                assert logged == every, f"hop {hop}: lines lost or repeated"
                current = moved
        finally:
            await job.aclose()

    run(scenario())


def test_aborted_restore_kills_and_reaps_the_restored_tree(
    hosts: tuple[Host, Host], job: Job
) -> None:
    """Aborting at post-restore: CRIU kills the restored tree, which we reap (it is our child);
    the same images then restore fine."""
    a, b = hosts

    async def scenario() -> None:
        try:
            ticker = await job.launch("ticker", a, "ticker")
            await progress_beyond(job.status_file("ticker"), 20)
            await criu.dump(dump_spec(ticker, a, job.root / "img"))
            await ticker.wait()
            dumped_at = await assert_still(job.status_file("ticker"))

            pipe = job.restore_pipe("ticker", ticker)
            held = await criu.start_restore(
                criu.RestoreSpec(
                    images_dir=job.root / "img",
                    work_dir=job.root / "rst-1",
                    inherit_fds=pipe.inherit_fds,
                    netns=b.netns,
                )
            )
            pid = await held.held()
            ref = procs.ProcessRef(pid, procs.start_ticks(pid) or 0)
            job.started.append(ref)
            assert is_child_of_us(pid)
            await held.abort()
            pipe.discard()
            assert not Path(f"/proc/{pid}").exists(), "the aborted restore left its root behind"
            assert await assert_still(job.status_file("ticker")) == dumped_at
            with pytest.raises(CriuError, match="aborted"):
                await held.release()

            again = await job.restore("ticker", ticker, job.root / "img", b)
            await progress_beyond(job.status_file("ticker"), dumped_at + 40)
            assert not again.exited
        finally:
            await job.aclose()

    run(scenario())


async def dumped_ticker(job: Job, host: Host, memory_mib: int) -> tuple[RankProcess, int]:
    """A ticker holding ``memory_mib`` MiB of patterned memory, dumped (and so killed) after a
    full check of that memory; returns it and its count at the dump."""
    ticker = await job.launch("ticker", host, "ticker", "--memory-mib", str(memory_mib))
    await progress_beyond(job.status_file("ticker"), memory_mib + 5)
    await criu.dump(dump_spec(ticker, host, job.root / "img"))
    await ticker.wait()
    return ticker, await assert_still(job.status_file("ticker"))


def lazy_spec(job: Job, host: Host, pipe: ranks.RestorePipe) -> criu.RestoreSpec:
    return criu.RestoreSpec(
        images_dir=job.root / "img",
        work_dir=job.root / "rst-lazy",
        inherit_fds=pipe.inherit_fds,
        netns=host.netns,
        lazy_pages=True,
    )


def test_lazy_restore_runs_the_rank_while_its_memory_follows(
    hosts: tuple[Host, Host], job: Job
) -> None:
    """A lazy restore (post-copy): CRIU creates the rank without its memory and a lazy-pages
    daemon copies it in; the rank runs on and finds every byte of its 48 MiB as it wrote it
    (it checks all of it, again and again); the daemon exits once every page is in."""
    a, b = hosts

    async def scenario() -> None:
        try:
            ticker, dumped_at = await dumped_ticker(job, a, 48)
            pipe = job.restore_pipe("ticker", ticker)
            held = await criu.start_restore(lazy_spec(job, b, pipe))
            daemon = held.pages
            assert daemon is not None
            pid = await held.held()
            job.track(pipe.adopt(pid))
            assert not daemon.done, "the daemon is gone before the rank has its memory"
            await held.release()
            await asyncio.wait_for(held.pages_in(), 30)
            assert daemon.done
            passes = status(job.status_file("ticker"))["memory_passes"]
            await progress_beyond(job.status_file("ticker"), dumped_at + 2 * 48 + 5)
            assert status(job.status_file("ticker"))["memory_passes"] >= passes + 2
        finally:
            await job.aclose()

    run(scenario())


def test_a_lazy_restore_whose_daemon_dies_reports_it(hosts: tuple[Host, Host], job: Job) -> None:
    """The lazy-pages daemon killed while the restored rank is held: pages_in() raises (the
    caller must not let the rank run: the kernel would give it zeros for the missing pages);
    the aborted restore leaves nothing behind and the images restore lazily again."""
    a, b = hosts

    async def scenario() -> None:
        try:
            ticker, dumped_at = await dumped_ticker(job, a, 48)
            pipe = job.restore_pipe("ticker", ticker)
            held = await criu.start_restore(lazy_spec(job, b, pipe))
            pid = await held.held()
            job.started.append(procs.ProcessRef(pid, procs.start_ticks(pid) or 0))
            assert held.pages is not None
            os.kill(held.pages.pid, signal.SIGKILL)
            with pytest.raises(CriuError, match=r"lazy-pages .* failed"):
                await asyncio.wait_for(held.pages_in(), 10)
            await held.abort()
            pipe.discard()
            assert not Path(f"/proc/{pid}").exists(), "the aborted restore left its root behind"

            shutil.rmtree(job.root / "rst-lazy")
            again = await job.restore("ticker", ticker, job.root / "img", b)
            await progress_beyond(job.status_file("ticker"), dumped_at + 48 + 5)
            assert not again.exited
        finally:
            await job.aclose()

    run(scenario())


def test_an_agent_restarted_meanwhile_waits_for_earlier_lazy_pages_daemons(
    hosts: tuple[Host, Host], job: Job
) -> None:
    """A restarted agent finds the lazy-pages daemons a previous agent left (by their command
    lines: they are not its children). One serves a rank that runs: the agent waits for it
    before serving; it fails (its log says why), so that rank is killed. The other serves no
    running rank (its restore never released one): it is killed at once. The previous agent's
    working copies go."""
    a, _ = hosts

    class Rank:
        killed = 0
        exited = False

        def kill(self) -> bool:
            self.killed += 1
            return True

    async def scenario() -> None:
        daemons: dict[int, criu.LazyPages] = {}
        try:
            await dumped_ticker(job, a, 8)
            work = job.root / "agent"
            root = work / "restores" / "rst-earlier"
            (root / "logs").mkdir(parents=True)
            (root / restoring.RESTORE_RECORD).write_text(json.dumps({"job": job.name}))
            for number in (3, 4):
                shutil.copytree(job.root / "img", root / f"rank-{number}")
                daemons[number] = await criu.start_lazy_pages(
                    criu.RestoreSpec(
                        images_dir=root / f"rank-{number}",
                        work_dir=root / "logs" / f"rank-{number}",
                        lazy_pages=True,
                    )
                )
            rank = Rank()
            waiting = asyncio.create_task(
                restoring.finish_earlier_restores(work, {(job.name, 3): cast(Any, rank)})
            )
            await asyncio.sleep(0.3)
            assert not waiting.done(), "the agent did not wait for the daemon of a running rank"
            assert daemons[4].done, "the daemon serving no rank was left waiting"
            short = Path(tempfile.mkdtemp(prefix="crt-")) / "logs"  # socket paths are short
            short.symlink_to(root / "logs" / "rank-3")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bad:
                bad.connect(str(short / "lazy-pages.socket"))
                bad.send(b"\x01")  # not a PID: the daemon logs an error
            shutil.rmtree(short.parent)
            await asyncio.sleep(0.2)
            daemons[3].kill()
            await asyncio.wait_for(waiting, 10)
            assert rank.killed == 1
            assert list((work / "restores").iterdir()) == []
        finally:
            for daemon in daemons.values():
                daemon.kill()
            await job.aclose()

    run(scenario())


def test_restore_failing_after_fork_raises_and_leaves_no_zombie(
    hosts: tuple[Host, Host], job: Job
) -> None:
    """A restore that fails once the tree exists (the server's port is still taken by the
    original, left running) raises CriuError with CRIU's reason; the half-restored root (our
    child) and CRIU's orphaned helpers are killed and reaped: no zombie is left."""
    a, _ = hosts

    async def scenario() -> None:
        try:
            server = await job.launch(
                "server", a, "server", "--bind", a.address, "--port", str(PORT)
            )
            await asyncio.sleep(0.3)
            await criu.dump(dump_spec(server, a, job.root / "img", leave_running=True))
            held = await criu.start_restore(
                criu.RestoreSpec(images_dir=job.root / "img", netns=a.netns)
            )
            with pytest.raises(CriuError, match="Address already in use") as caught:
                await held.held()
            assert "restore.log" in str(caught.value)
            await held.abort()
            # CRIU's cgroup daemon outlives the failed restore and is adopted by us. It ends
            # once every restored task has closed its socket, which a loaded machine can take
            # seconds to finish; from then on the orphan reaper (started by ranks.launch) must
            # collect it within two scans.
            deadline = time.monotonic() + 15
            while our_children(zombies=False, comm="criu") and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            helpers = our_children(zombies=False, comm="criu")
            assert helpers == [], [_describe(pid) for pid in helpers]
            deadline = time.monotonic() + 3 * reaper.ORPHAN_SCAN_INTERVAL + 1
            while our_zombies() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            left = our_zombies()
            assert left == [], [_describe(pid) for pid in left]
            assert not server.exited
        finally:
            await job.aclose()

    run(scenario())


def test_agent_death_while_holding_rolls_the_dump_back(hosts: tuple[Host, Host], job: Job) -> None:
    """If the process holding a dump at post-dump dies, CRIU sees its socket close, takes it as
    "no" and rolls back: the rank resumes instead of staying frozen."""
    a, _ = hosts
    holder = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from agent import criu\n"
        "async def main():\n"
        "    spec = criu.DumpSpec(pid=int(sys.argv[1]), images_dir=Path(sys.argv[2]),\n"
        "                         netns=Path(sys.argv[3]), freeze_cgroup=Path(sys.argv[4]))\n"
        "    held = await criu.start_dump(spec)\n"
        "    await held.held()\n"
        "    print('HELD', held.criu_pid, flush=True)\n"
        "    await asyncio.sleep(3600)\n"
        "asyncio.run(main())\n"
    )

    async def scenario() -> None:
        try:
            ticker = await job.launch("ticker", a, "ticker")
            await progress_beyond(job.status_file("ticker"), 20)
            agent = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                holder,
                str(ticker.pid),
                str(job.root / "img"),
                str(a.netns),
                str(ticker.cgroup.path),
                stdout=asyncio.subprocess.PIPE,
            )
            job.started.append(procs.ProcessRef(agent.pid, procs.start_ticks(agent.pid) or 0))
            assert agent.stdout is not None
            criu_pid = 0
            async for line in agent.stdout:
                if line.startswith(b"HELD "):
                    criu_pid = int(line.split()[1])
                    break
            assert criu_pid, "the holder never reported its dump as held"
            criu_process = PinnedProcess(criu_pid)
            frozen_at = await assert_still(job.status_file("ticker"))
            agent.kill()
            await agent.wait()
            await progress_beyond(job.status_file("ticker"), frozen_at + 40)
            assert not ticker.exited
            # CRIU, orphaned, was adopted by us (a subreaper) and exits after the rollback.
            assert await asyncio.wait_for(criu_process.wait(), 10) not in (None, 0)
        finally:
            await job.aclose()

    run(scenario())


def test_dump_of_a_missing_process_raises_criu_error_with_the_reason(job: Job) -> None:
    """CRIU's own reason and its log's path are in the error; abort afterwards is harmless."""
    gone = subprocess.Popen(["true"])
    gone.wait()

    async def scenario() -> None:
        held = await criu.start_dump(criu.DumpSpec(pid=gone.pid, images_dir=job.root / "img"))
        with pytest.raises(CriuError) as caught:
            await held.held()
        message = str(caught.value)
        assert f"pid {gone.pid}" in message and "dump.log" in message
        assert re.search(r"Error \(criu/[a-z-]+\.c:\d+\)", message), message
        assert "RLIMIT_NOFILE" not in message
        assert caught.value.phase == "dump"
        await held.abort()
        with pytest.raises(CriuError):
            await held.commit()

    run(scenario())


def test_dump_criu_refuses_raises_with_the_reason_and_the_rank_runs_on(
    hosts: tuple[Host, Host], job: Job
) -> None:
    """A rank connected to a unix socket outside its tree cannot be dumped: the CriuError says
    why, and the rank, rolled back, keeps running."""
    a, _ = hosts
    path = job.root / "outside.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    connector = (
        "import socket, sys, time\n"
        f"s = socket.socket(socket.AF_UNIX); s.connect({str(path)!r})\n"
        "print('connected', flush=True)\n"
        "while True: time.sleep(0.01)\n"
    )

    async def scenario() -> None:
        try:
            rank = await ranks.launch(
                job.name,
                "holder",
                [sys.executable, "-c", connector],
                work_dir=job.root,
                netns=a.netns,
                freezer=job.freezer,
            )
            job.track(rank)
            peer, _ = await asyncio.get_running_loop().sock_accept(listener)
            with peer:
                held = await criu.start_dump(dump_spec(rank, a, job.root / "img"))
                with pytest.raises(CriuError, match=r"(?i)unix") as caught:
                    await held.held()
                assert "dump.log" in str(caught.value)
                await held.abort()
                assert not rank.exited
                assert rank.cgroup.is_frozen() is False
        finally:
            await job.aclose()

    try:
        run(scenario())
    finally:
        listener.close()
