"""Host-private files carried with a checkpoint (agent.host_files): what the images name
under the private roots is packed with its parents, and recreated where missing, never over
an existing file nor through a symbolic link."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent import host_files


@pytest.fixture
def named(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    paths: list[Path] = []
    monkeypatch.setattr(host_files, "named_paths", lambda _images: list(paths))
    return paths


def test_files_under_private_roots_are_packed_with_their_parents_and_recreated_where_missing(
    tmp_path: Path, named: list[Path]
) -> None:
    root, images, elsewhere = tmp_path / "tmp", tmp_path / "images", tmp_path / "home"
    for d in (root / "app" / "run", images, elsewhere):
        d.mkdir(parents=True)
    held = root / "app" / "run" / "state.db"
    held.write_bytes(b"x" * 1000)
    os.chmod(held, 0o640)
    os.mkfifo(root / "app" / "fifo")
    (elsewhere / "shared.txt").write_text("on every host")
    named.extend([held, root / "app" / "fifo", elsewhere / "shared.txt", root / "gone"])
    packed = host_files.pack(images, [root])
    assert packed == [str(root / "app"), str(root / "app" / "run"), str(held),
                      str(root / "app" / "fifo")]  # fmt: skip

    target = tmp_path / "other-host"
    target.mkdir()
    made = host_files.unpack(images, target)
    moved = target / str(held).lstrip("/")
    assert moved.read_bytes() == b"x" * 1000 and (moved.stat().st_mode & 0o777) == 0o640
    assert (target / str(root / "app" / "fifo").lstrip("/")).is_fifo()
    assert len(made) == 4
    moved.write_bytes(b"newer")
    assert host_files.unpack(images, target) == []  # existing files are left as they are
    assert moved.read_bytes() == b"newer"


def test_nothing_is_packed_through_a_symbolic_link_or_when_nothing_is_private(
    tmp_path: Path, named: list[Path]
) -> None:
    root, images, secret = tmp_path / "tmp", tmp_path / "images", tmp_path / "etc"
    for d in (root, images, secret):
        d.mkdir()
    (secret / "shadow").write_text("secret")
    (root / "link").symlink_to(secret)
    named.append(root / "link" / "shadow")
    assert host_files.pack(images, [root]) == []
    assert not (images / host_files.ARCHIVE).exists()
    assert host_files.unpack(images, tmp_path) == []


def test_a_folder_mounted_into_a_private_root_from_elsewhere_is_not_packed(
    tmp_path: Path, named: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """crctl's checkout kept shared inside a host's own /tmp: its files are every host's."""
    root, images = tmp_path / "tmp", tmp_path / "images"
    (root / "checkout").mkdir(parents=True)
    images.mkdir()
    own, shared = root / "own.txt", root / "checkout" / "libmpi.so"
    own.write_text("mine")
    shared.write_text("everyone's")
    named.extend([own, shared])
    monkeypatch.setattr(host_files, "_mount_points", lambda: [Path("/"), root / "checkout"])
    assert host_files.pack(images, [root]) == [str(own)]
    assert host_files.private_roots(Path("/work"), "") == (Path("/work"),)
    assert host_files.private_roots(Path("/work"), "/tmp, /dev/shm") == (
        Path("/tmp"), Path("/dev/shm"), Path("/work"))  # fmt: skip
