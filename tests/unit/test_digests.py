"""The manifests' digests (crctl.digests): BLAKE3 for new manifests, large files hashed with
BLAKE3's threads, old sha256 manifests still verified with sha256, and every difference between
a folder and its manifest named with the file and what differs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import blake3
import pytest
from google.protobuf.json_format import Parse

from crctl import digests
from crctl.digests import Algorithm, FileDigest
from crctl.errors import CrctlError
from crctl.v1 import control_pb2

EMPTY_BLAKE3 = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def images(folder: Path) -> dict[str, bytes]:
    """A rank's image folder: small images and a page image past the threaded size."""
    files = {
        "core-1.img": b"core" * 300,
        "files.img": os.urandom(5000),
        "pages-1.img": os.urandom(digests.THREADED_FROM_BYTES + 12345),
        "sub/fdinfo-2.img": b"",
    }
    for name, data in files.items():
        write(folder / name, data)
    return files


# BLAKE3 chunks are 1 KiB: sizes around a chunk and a multi-chunk tree, and past the threshold.
@pytest.mark.parametrize("size", [1, 1023, 1024, 1025, 64 * 1024 + 7, (4 << 20) + 1])
def test_a_file_s_blake3_is_the_blake3_library_s_one_shot_digest(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = write(tmp_path / "f.img", data)
    assert digests.digest_file(path) == blake3.blake3(data).hexdigest()


def test_an_empty_file_has_the_digest_of_no_bytes(tmp_path: Path) -> None:
    """An empty file cannot be mapped; it is hashed as no bytes, with either algorithm."""
    path = write(tmp_path / "empty.img", b"")
    assert digests.digest_file(path) == EMPTY_BLAKE3
    assert digests.digest_file(path, Algorithm.SHA256) == hashlib.sha256().hexdigest()
    assert digests.digest_files(tmp_path) == [FileDigest("empty.img", 0, EMPTY_BLAKE3)]


def test_threaded_and_single_threaded_hashes_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(3 << 20)
    path = write(tmp_path / "pages-1.img", data)
    single = digests.digest_file(path)
    monkeypatch.setattr(digests, "THREADED_FROM_BYTES", 0)
    assert digests.digest_file(path) == single
    assert single == blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest()


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_bytes_hashed_piece_by_piece_have_the_digest_of_the_whole_file(
    tmp_path: Path, algorithm: Algorithm
) -> None:
    """What a fetch computes as chunks arrive is what a manifest records of the file."""
    data = os.urandom((1 << 20) * 3 + 777)
    path = write(tmp_path / "pages-1.img", data)
    hasher = digests.new_hasher(algorithm, piece_size=1 << 20)
    for offset in range(0, len(data), 1 << 20):
        hasher.update(memoryview(data)[offset : offset + (1 << 20)])
    assert hasher.hexdigest() == digests.digest_file(path, algorithm)
    assert digests.new_hasher(algorithm).hexdigest() == digests.digest_file(
        write(tmp_path / "empty.img", b""), algorithm
    )


def test_large_files_are_hashed_with_blake3_s_threads_small_ones_on_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[int] = []

    def recording(*args: Any, max_threads: int = 1, **kwargs: Any) -> blake3.blake3:
        threads.append(max_threads)
        return blake3.blake3(*args, max_threads=max_threads, **kwargs)

    recording.AUTO = blake3.blake3.AUTO  # type: ignore[attr-defined]
    monkeypatch.setattr(digests, "blake3", SimpleNamespace(blake3=recording))
    files = images(tmp_path)
    listed = digests.digest_files(tmp_path)
    assert [d.path for d in listed] == sorted(files)
    # core-1.img, files.img, pages-1.img (past the threshold), sub/fdinfo-2.img
    assert threads == [1, 1, blake3.blake3.AUTO, 1]


def test_digest_files_lists_every_file_with_size_and_blake3(tmp_path: Path) -> None:
    files = images(tmp_path)
    assert digests.digest_files(tmp_path) == [
        FileDigest(name, len(data), blake3.blake3(data).hexdigest(), Algorithm.BLAKE3)
        for name, data in sorted(files.items())
    ]


def test_digest_files_of_a_missing_folder_fails(tmp_path: Path) -> None:
    with pytest.raises(CrctlError, match="does not exist"):
        digests.digest_files(tmp_path / "nowhere")


def test_a_manifest_line_round_trips_through_protobuf_with_its_algorithm(tmp_path: Path) -> None:
    digest = FileDigest("pages-1.img", 10, "ab" * 32)
    line = digest.to_proto(prefix="rank-1/")
    assert line.path == "rank-1/pages-1.img"
    assert line.algorithm == control_pb2.DIGEST_ALGORITHM_BLAKE3
    assert line.digest == "ab" * 32 and not line.HasField("sha256")
    assert FileDigest.from_proto(line, strip="rank-1/") == digest
    assert FileDigest.from_proto(line) == digest._replace(path="rank-1/pages-1.img")


def test_a_manifest_written_before_blake3_still_verifies_with_sha256(tmp_path: Path) -> None:
    """Such a manifest's lines have a sha256 and no algorithm (JSON as the old coordinator
    wrote it); verify hashes them with sha256, and names sha256 when one differs."""
    files = images(tmp_path / "rank-0")
    old_lines = [
        Parse(
            f'{{"path": "rank-0/{name}", "size": "{len(data)}", '
            f'"sha256": "{hashlib.sha256(data).hexdigest()}"}}',
            control_pb2.FileDigest(),
        )
        for name, data in files.items()
    ]
    expected = [FileDigest.from_proto(line) for line in old_lines]
    assert {d.algorithm for d in expected} == {Algorithm.SHA256}
    assert digests.verify(tmp_path, expected) == []

    pages = tmp_path / "rank-0" / "pages-1.img"
    with pages.open("r+b") as f:
        f.write(b"\xff" if files["pages-1.img"][:1] != b"\xff" else b"\x00")
    (problem,) = digests.verify(tmp_path, expected)
    assert problem.path == "rank-0/pages-1.img" and problem.kind == "digest"
    assert str(problem).startswith(
        f"rank-0/pages-1.img: sha256 {digests.digest_file(pages, Algorithm.SHA256)}"
    )
    assert str(problem).endswith(f", expected {hashlib.sha256(files['pages-1.img']).hexdigest()}")


def test_verify_names_missing_resized_changed_and_extra_files(tmp_path: Path) -> None:
    folder = tmp_path / "rank-1"
    images(folder)
    manifest = digests.digest_files(folder)
    assert digests.verify(folder, manifest, allow_extra=False) == []

    (folder / "core-1.img").unlink()
    with (folder / "files.img").open("r+b") as f:
        f.truncate(100)
    pages = folder / "pages-1.img"
    data = bytearray(pages.read_bytes())
    data[len(data) // 2] ^= 0x01
    pages.write_bytes(data)
    write(folder / "stats-dump", b"written later")

    problems = digests.verify(folder, manifest, allow_extra=False)
    recorded = {d.path: d for d in manifest}
    assert [(p.path, p.kind, p.detail) for p in problems] == [
        ("core-1.img", "missing", "missing"),
        ("files.img", "size", f"size 100, expected {recorded['files.img'].size}"),
        (
            "pages-1.img",
            "digest",
            f"blake3 {blake3.blake3(bytes(data)).hexdigest()}, "
            f"expected {recorded['pages-1.img'].digest}",
        ),
        ("stats-dump", "extra", "not in the manifest"),
    ]
    # Files beside the images (logs) are allowed unless asked otherwise.
    assert "stats-dump" not in {p.path for p in digests.verify(folder, manifest)}


def test_a_manifest_line_with_no_digest_never_verifies(tmp_path: Path) -> None:
    """Fail-closed: a line with neither a digest nor an old sha256 matches no file."""
    write(tmp_path / "core-1.img", b"core")
    line = FileDigest.from_proto(control_pb2.FileDigest(path="core-1.img", size=4))
    (problem,) = digests.verify(tmp_path, [line])
    assert (problem.kind, problem.detail) == ("digest", "the manifest records no digest")


def test_a_manifest_naming_an_unknown_algorithm_is_refused() -> None:
    line = control_pb2.FileDigest(path="rank-0/core-1.img", size=4, digest="ab")
    line.algorithm = 7  # type: ignore[assignment]  # written by a later crctl
    with pytest.raises(CrctlError, match=r"rank-0/core-1\.img: .* algorithm 7"):
        FileDigest.from_proto(line)
