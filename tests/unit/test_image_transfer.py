"""Checkpoint images from host to host (agent/transfer): a rank's files fetched from another
host's image server over real loopback CurveZMQ sockets with real keys, checked against the
manifest as they arrive, the sources tried in turn, nothing partial left behind, and a server
that serves only rank folders of its store, and only to the keys it allows."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq
import zmq.auth
from structlog.testing import capture_logs

from agent.transfer import ImageServer, ImageSource, RankFetch, fetch_rank, fetch_ranks
from crctl import digests, keys
from crctl.errors import ImageFetchError
from crctl.v1 import control_pb2, transfer_pb2

JOB, CKPT = "ring", "ckpt-0123abcd"
PAGES = "rank-0/pages-1.img"


def keypair(folder: Path, name: str) -> keys.KeyPair:
    folder.mkdir(parents=True, exist_ok=True)
    _, secret_file = zmq.auth.create_certificates(str(folder), name)
    public, secret = zmq.auth.load_certificate(secret_file)
    assert secret is not None
    return keys.KeyPair(public, secret)


def write_rank(store: Path, rank: int = 0, *, pages: int = 8 << 20) -> list[control_pb2.FileDigest]:
    """A rank's image folder in ``store`` (small images, an 8 MiB page image, an empty file,
    one in a subfolder); its manifest lines, in the order a fetch takes them."""
    folder = store / JOB / CKPT / f"rank-{rank}"
    files = {
        "core-1.img": b"core" * 300,
        "empty.img": b"",
        "fdinfo/fdinfo-2.img": os.urandom(3000),
        "pages-1.img": os.urandom(pages),
    }
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return [line.to_proto(prefix=f"rank-{rank}/") for line in digests.digest_files(folder)]


def leftovers(store: Path) -> list[str]:
    """Every file under ``store`` whose name says it is a partial."""
    return [str(p) for p in store.rglob("*") if p.name.endswith(".part")]


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture
def client(key_dir: Path) -> keys.KeyPair:
    return keypair(key_dir, "client")


@pytest.fixture
def serve(key_dir: Path, client: keys.KeyPair) -> Iterator[Callable[..., ImageSource]]:
    """serve(host, store) -> the source of an image server of ``store`` that admits
    ``client`` (or the keys given); every one closed at the end."""
    servers: list[ImageServer] = []

    def start(host: str, store: Path, allowed: set[bytes] | None = None) -> ImageSource:
        own = keypair(key_dir, host)
        admitted = {client.public} if allowed is None else allowed
        server = ImageServer(store, "127.0.0.1", 0, own, lambda: admitted)
        servers.append(server)
        return ImageSource(host, server.start(), own.public)

    yield start
    for server in servers:
        server.close()
        server.close()  # idempotent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_whole_rank_is_fetched_and_matches_its_manifest(
    tmp_path: Path, serve: Callable[..., ImageSource], client: keys.KeyPair
) -> None:
    lines = write_rank(tmp_path / "h1")
    source = serve("h1", tmp_path / "h1")
    here = tmp_path / "here"
    with capture_logs() as events:
        result = fetch_rank([source], client, JOB, CKPT, 0, lines, here)
    fetched = here / JOB / CKPT / "rank-0"
    expected = [digests.FileDigest.from_proto(line, strip="rank-0/") for line in lines]
    assert digests.verify(fetched, expected, allow_extra=False) == []
    assert (result.source, result.files, result.present) == ("h1", 4, 0)
    assert result.bytes == sum(line.size for line in lines) > 8 << 20
    assert leftovers(here) == []
    done = next(e for e in events if e["event"] == "image_fetched")
    assert done["source"] == "h1" and done["bytes"] == result.bytes and done["mb_per_s"] > 0
    assert (done["job"], done["checkpoint"], done["rank"]) == (JOB, CKPT, 0)
    assert any(e["event"] == "image_fetch_started" for e in events)


def test_bytes_that_do_not_match_the_manifest_fail_the_fetch_and_leave_nothing(
    tmp_path: Path, serve: Callable[..., ImageSource], client: keys.KeyPair
) -> None:
    """Same size, other bytes: found by the digest as they arrive; the partial is removed."""
    lines = write_rank(tmp_path / "h1")
    pages = tmp_path / "h1" / JOB / CKPT / PAGES
    pages.write_bytes(os.urandom(pages.stat().st_size))
    here = tmp_path / "here"
    with pytest.raises(ImageFetchError) as caught:
        fetch_rank([serve("h1", tmp_path / "h1")], client, JOB, CKPT, 0, lines, here)
    assert f"rank 0 of {CKPT}: h1: {PAGES} does not match the manifest" in str(caught.value)
    assert [(f.host, f.damaged) for f in caught.value.failures] == [("h1", True)]
    assert caught.value.damaged_ranks == (0,)  # its only holder's copy differs
    assert (caught.value.job, caught.value.checkpoint, caught.value.rank) == (JOB, CKPT, 0)
    assert not (here / JOB / CKPT / PAGES).exists()
    assert leftovers(here) == []


def test_a_source_with_bad_bytes_is_left_for_the_next(
    tmp_path: Path, serve: Callable[..., ImageSource], client: keys.KeyPair
) -> None:
    lines = write_rank(tmp_path / "h2")
    bad = tmp_path / "h1" / JOB / CKPT / "rank-0"
    bad.mkdir(parents=True)
    (bad / "core-1.img").write_bytes(b"eroc" * 300)
    sources = [serve("h1", tmp_path / "h1"), serve("h2", tmp_path / "h2")]
    result = fetch_rank(sources, client, JOB, CKPT, 0, lines, tmp_path / "here")
    assert result.source == "h2"
    assert [(f.host, f.reason.split(" (")[0]) for f in result.failures] == [
        ("h1", "rank-0/core-1.img does not match the manifest")
    ]


def test_a_source_that_lacks_a_file_is_left_for_the_next_from_that_file_on(
    tmp_path: Path, serve: Callable[..., ImageSource], client: keys.KeyPair
) -> None:
    lines = write_rank(tmp_path / "h2")
    partial_copy = tmp_path / "h1" / JOB / CKPT / "rank-0"
    partial_copy.mkdir(parents=True)
    for name in ("core-1.img", "empty.img"):  # the files before fdinfo/ in the manifest
        (partial_copy / name).write_bytes(
            (tmp_path / "h2" / JOB / CKPT / "rank-0" / name).read_bytes()
        )
    sources = [serve("h1", tmp_path / "h1"), serve("h2", tmp_path / "h2")]
    here = tmp_path / "here"
    with capture_logs() as events:
        result = fetch_rank(sources, client, JOB, CKPT, 0, lines, here)
    assert result.source == "h2"
    assert [(f.host, f.reason) for f in result.failures] == [
        ("h1", "no such file rank-0/fdinfo/fdinfo-2.img")
    ]
    served = [e["path"] for e in events if e["event"] == "image_served"]
    assert served == [
        "rank-0/core-1.img",  # by h1
        "rank-0/empty.img",
        "rank-0/fdinfo/fdinfo-2.img",  # by h2: it starts where h1 failed
        PAGES,
    ]
    expected = [digests.FileDigest.from_proto(line, strip="rank-0/") for line in lines]
    assert digests.verify(here / JOB / CKPT / "rank-0", expected) == []


def test_an_unreachable_source_is_given_up_on_after_the_timeout(
    tmp_path: Path, serve: Callable[..., ImageSource], client: keys.KeyPair
) -> None:
    lines = write_rank(tmp_path / "h2", pages=1 << 20)
    nobody = ImageSource("h1", f"tcp://127.0.0.1:{free_port()}", keypair(tmp_path, "h1").public)
    sources = [nobody, serve("h2", tmp_path / "h2")]
    started = time.monotonic()
    result = fetch_rank(sources, client, JOB, CKPT, 0, lines, tmp_path / "here", timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 3
    assert result.source == "h2"
    assert [(f.host, f.reason) for f in result.failures] == [
        ("h1", "unreachable (no answer in 0.3s)")
    ]


def test_every_source_failing_names_each_one_and_why(
    tmp_path: Path, serve: Callable[..., ImageSource], client: keys.KeyPair
) -> None:
    lines = write_rank(tmp_path / "elsewhere", pages=1000)
    empty = tmp_path / "h3"
    empty.mkdir()
    nobody = ImageSource("h4", f"tcp://127.0.0.1:{free_port()}", keypair(tmp_path, "h4").public)
    with pytest.raises(ImageFetchError) as caught:
        fetch_rank(
            [serve("h3", empty), nobody],
            client,
            JOB,
            CKPT,
            0,
            lines,
            tmp_path / "here",
            timeout=0.2,
        )
    assert caught.value.message == (
        f"rank 0 of {CKPT}: h3: no such file rank-0/core-1.img; h4: unreachable (no answer in 0.2s)"
    )
    assert [f.damaged for f in caught.value.failures] == [True, False]
    assert caught.value.damaged_ranks == ()  # h4 was not asked: it may hold an intact copy
    assert leftovers(tmp_path / "here") == []


def test_a_rank_whose_every_holder_has_a_copy_unlike_the_manifest_is_named_damaged(
    tmp_path: Path, serve: Callable[..., ImageSource], client: keys.KeyPair
) -> None:
    """Bytes that do not verify on one holder, a file of another size on the other: rank 0 is
    damaged everywhere; rank 1, whose holder could not be reached, is only out of reach."""
    lines = write_rank(tmp_path / "h1", pages=1000)
    shutil.copytree(tmp_path / "h1", tmp_path / "h2")
    pages = tmp_path / "h1" / JOB / CKPT / PAGES
    pages.write_bytes(os.urandom(pages.stat().st_size))
    (tmp_path / "h2" / JOB / CKPT / PAGES).write_bytes(b"short")
    nobody = ImageSource("h3", f"tcp://127.0.0.1:{free_port()}", keypair(tmp_path, "h3").public)
    fetches = [
        RankFetch(
            JOB, CKPT, 0, lines, [serve("h1", tmp_path / "h1"), serve("h2", tmp_path / "h2")]
        ),
        RankFetch(JOB, CKPT, 1, write_rank(tmp_path / "h3", 1, pages=10), [nobody]),
    ]
    with pytest.raises(ImageFetchError) as caught:
        fetch_ranks(fetches, client, tmp_path / "here", timeout=0.2)
    assert [(f.rank, f.host, f.damaged) for f in caught.value.failures] == [
        (0, "h1", True),
        (0, "h2", True),
        (1, "h3", False),
    ]
    assert caught.value.damaged_ranks == (0,)


def test_a_client_whose_key_is_not_allowed_gets_nothing(
    tmp_path: Path, serve: Callable[..., ImageSource], client: keys.KeyPair
) -> None:
    lines = write_rank(tmp_path / "h1", pages=1000)
    source = serve("h1", tmp_path / "h1", allowed={keypair(tmp_path, "someone-else").public})
    here = tmp_path / "here"
    with capture_logs() as events, pytest.raises(ImageFetchError) as caught:
        fetch_rank([source], client, JOB, CKPT, 0, lines, here, timeout=2)
    assert caught.value.failures[0].reason == "refused this host's key (CurveZMQ authentication)"
    refused = [e for e in events if e["event"] == "image_client_refused"]
    assert refused and refused[0]["client_key"] == client.public.decode()
    assert not (here / JOB / CKPT / "rank-0" / "core-1.img").exists()


def test_a_server_that_does_not_hold_the_key_it_was_given_is_not_trusted(
    tmp_path: Path, serve: Callable[..., ImageSource], client: keys.KeyPair
) -> None:
    lines = write_rank(tmp_path / "h1", pages=1000)
    real = serve("h1", tmp_path / "h1")
    impostor = ImageSource("h1", real.endpoint, keypair(tmp_path, "not-h1").public)
    with pytest.raises(ImageFetchError) as caught:
        fetch_rank([impostor], client, JOB, CKPT, 0, lines, tmp_path / "here", timeout=2)
    reason = caught.value.failures[0].reason  # the server hangs up: it cannot read our hello
    assert reason.startswith("hung up in the CurveZMQ handshake (")
    assert reason.endswith("): not the key this host was given?")


def ask(source: ImageSource, own: keys.KeyPair, **request: object) -> transfer_pb2.ChunkReply:
    """One chunk request to a server, as a client of its own would send it."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    sock.curve_serverkey = source.server_key
    sock.curve_publickey = own.public
    sock.curve_secretkey = own.secret
    try:
        sock.connect(source.endpoint)
        fields: dict[str, object] = {"tag": 7, "job": JOB, "checkpoint": CKPT, "length": 100}
        fields.update(request)
        sock.send(transfer_pb2.ChunkRequest(**fields).SerializeToString())  # type: ignore[arg-type]
        assert sock.poll(5000), "the server did not answer"
        reply_frame, data = sock.recv_multipart()
        reply = transfer_pb2.ChunkReply.FromString(reply_frame)
        assert reply.tag == 7 and (data == b"" or reply.error == 0)
        return reply
    finally:
        sock.close(0)
        context.term()


def test_the_server_serves_only_regular_files_in_a_rank_s_folder_of_its_store(
    tmp_path: Path, serve: Callable[..., ImageSource], client: keys.KeyPair
) -> None:
    store = tmp_path / "h1"
    write_rank(store, pages=1000)
    secret = tmp_path / "secret.txt"
    secret.write_text("not an image")
    checkpoint = store / JOB / CKPT
    (checkpoint / "manifest.json").write_text("{}")
    (checkpoint / "rank-0" / "escape.img").symlink_to(secret)
    (checkpoint / "rank-1").symlink_to(tmp_path)
    os.mkfifo(checkpoint / "rank-0" / "fifo.img")
    source = serve("h1", store)

    assert ask(source, client, path="rank-0/core-1.img").error == 0  # what is served
    refused = {
        "rank-0/../../../../secret.txt": "leaves",
        "rank-0/./core-1.img": "leaves",
        "/etc/passwd": "absolute",
        "manifest.json": "not in a rank's folder",
        "rank-0/escape.img": "symlink",
        "rank-1/secret.txt": "symlink",
        "rank-0/fifo.img": "not a regular file",
        "rank-0/fdinfo": "not a regular file",
    }
    with capture_logs() as events:
        for path, why in refused.items():
            reply = ask(source, client, path=path)
            assert reply.error == transfer_pb2.CHUNK_ERROR_REFUSED, path
            assert why in reply.reason, (path, reply.reason)
        for job, checkpoint in (("..", CKPT), (JOB, ".."), (f"{JOB}/{CKPT}", "rank-0")):
            reply = ask(source, client, job=job, checkpoint=checkpoint, path="rank-0/core-1.img")
            assert reply.error == transfer_pb2.CHUNK_ERROR_REFUSED, (job, checkpoint)
    assert len([e for e in events if e["event"] == "image_request_refused"]) == len(refused) + 3
    missing = ask(source, client, path="rank-0/pages-9.img")
    assert missing.error == transfer_pb2.CHUNK_ERROR_NOT_FOUND
    too_big = ask(source, client, path="rank-0/core-1.img", length=64 << 20)
    assert too_big.error == transfer_pb2.CHUNK_ERROR_BAD_REQUEST


def test_a_manifest_path_that_leaves_the_store_or_meets_a_symlink_is_refused_here(
    tmp_path: Path, serve: Callable[..., ImageSource], client: keys.KeyPair
) -> None:
    lines = write_rank(tmp_path / "h1", pages=1000)
    source = serve("h1", tmp_path / "h1")
    here = tmp_path / "here"
    escape = control_pb2.FileDigest()
    escape.CopyFrom(lines[0])
    escape.path = "rank-0/../../../outside.img"
    with pytest.raises(ImageFetchError, match="leaves or breaks it"):
        fetch_rank([source], client, JOB, CKPT, 0, [escape], here)
    with pytest.raises(ImageFetchError, match="not a file of rank 1"):
        fetch_rank([source], client, JOB, CKPT, 1, lines, here)
    (here / JOB / CKPT).mkdir(parents=True)
    (here / JOB / CKPT / "rank-0").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ImageFetchError, match="symlink"):
        fetch_rank([source], client, JOB, CKPT, 0, lines, here)
    assert not (tmp_path / "elsewhere").exists()
    assert not (tmp_path / "outside.img").exists()


def test_files_already_in_place_are_not_fetched_again_and_a_file_that_differs_is_an_error(
    tmp_path: Path, serve: Callable[..., ImageSource], client: keys.KeyPair
) -> None:
    lines = write_rank(tmp_path / "h1")
    source = serve("h1", tmp_path / "h1")
    here = tmp_path / "here"
    (here / JOB / CKPT / "rank-0").mkdir(parents=True)
    for name in ("core-1.img", "pages-1.img"):
        original = tmp_path / "h1" / JOB / CKPT / "rank-0" / name
        (here / JOB / CKPT / "rank-0" / name).write_bytes(original.read_bytes())
    with capture_logs() as events:
        result = fetch_rank([source], client, JOB, CKPT, 0, lines, here)
    assert (result.files, result.present) == (2, 2)
    served = [e["path"] for e in events if e["event"] == "image_served"]
    assert served == ["rank-0/empty.img", "rank-0/fdinfo/fdinfo-2.img"]

    again = fetch_rank([source], client, JOB, CKPT, 0, lines, here)
    assert (again.source, again.files, again.present) == (None, 0, 4)

    core = here / JOB / CKPT / "rank-0" / "core-1.img"
    core.write_bytes(b"eroc" * 300)
    with pytest.raises(ImageFetchError, match=r"core-1\.img is in the store already and differs"):
        fetch_rank([source], client, JOB, CKPT, 0, lines, here)
    assert core.read_bytes() == b"eroc" * 300  # left for a person to look at


def test_several_ranks_are_fetched_at_once(
    tmp_path: Path, serve: Callable[..., ImageSource], client: keys.KeyPair
) -> None:
    """Each rank waits out an unreachable first source: one after the other, four would take
    four timeouts."""
    store = tmp_path / "h2"
    manifests = {rank: write_rank(store, rank, pages=2 << 20) for rank in range(4)}
    good = serve("h2", store)
    fetches = [
        RankFetch(
            JOB,
            CKPT,
            rank,
            lines,
            [ImageSource("h1", f"tcp://127.0.0.1:{free_port()}", good.server_key), good],
        )
        for rank, lines in manifests.items()
    ]
    started = time.monotonic()
    results = fetch_ranks(fetches, client, tmp_path / "here", timeout=0.5, parallel=4)
    assert time.monotonic() - started < 1.8  # one at a time: 4 x 0.5 s at least
    assert [(r.rank, r.source) for r in results] == [(rank, "h2") for rank in range(4)]
    for rank, lines in manifests.items():
        folder = tmp_path / "here" / JOB / CKPT / f"rank-{rank}"
        strip = f"rank-{rank}/"
        expected = [digests.FileDigest.from_proto(line, strip=strip) for line in lines]
        assert digests.verify(folder, expected, allow_extra=False) == []


def test_ranks_that_fail_together_are_named_in_one_error(
    tmp_path: Path, serve: Callable[..., ImageSource], client: keys.KeyPair
) -> None:
    store = tmp_path / "h1"
    fetches = [
        RankFetch(JOB, CKPT, rank, write_rank(store, rank, pages=10), []) for rank in range(3)
    ]
    source = serve("h1", store)
    fetches[1] = RankFetch(JOB, CKPT, 1, fetches[1].files, [source])
    with pytest.raises(ImageFetchError) as caught:
        fetch_ranks(fetches, client, tmp_path / "here")
    assert caught.value.message == (
        f"2 of 3 ranks could not be fetched: rank 0 of {CKPT}: no host to fetch it from; "
        f"rank 2 of {CKPT}: no host to fetch it from"
    )
    assert caught.value.rank is None and caught.value.checkpoint == CKPT
    assert (tmp_path / "here" / JOB / CKPT / "rank-1" / "pages-1.img").exists()


def test_the_allow_list_is_asked_at_each_connection(
    tmp_path: Path, serve: Callable[..., ImageSource], client: keys.KeyPair
) -> None:
    """A key the coordinator allows later is admitted without restarting the server."""
    lines = write_rank(tmp_path / "h1", pages=1000)
    allowed: set[bytes] = set()
    source = serve("h1", tmp_path / "h1", allowed=allowed)
    with pytest.raises(ImageFetchError, match="refused this host's key"):
        fetch_rank([source], client, JOB, CKPT, 0, lines, tmp_path / "here", timeout=2)
    allowed.add(client.public)
    assert fetch_rank([source], client, JOB, CKPT, 0, lines, tmp_path / "here").source == "h1"


def test_a_closed_server_s_thread_ends_and_its_port_is_free(
    tmp_path: Path, key_dir: Path, client: keys.KeyPair
) -> None:
    server = ImageServer(tmp_path, "127.0.0.1", 0, keypair(key_dir, "h1"), lambda: ())
    port = int(server.start().rsplit(":", 1)[1])
    assert any(t.name == "image-server" for t in threading.enumerate())
    server.close()
    assert not any(t.name == "image-server" for t in threading.enumerate())
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))
