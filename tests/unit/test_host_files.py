"""The host-files restart plugin: text files a rank reads get the new host names and addresses,
whole tokens only, in one pass, atomically, and it fails closed on files it cannot rewrite.
Pure: temporary files and a hand-made restart context, no CRIU."""

from __future__ import annotations

import asyncio
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import pytest

from agent import images
from agent.plugins.host_files import HostFiles, replace_tokens
from crctl.plugins import HostMove, HostSplit, PluginError, RestartContext


def move(old: str, new: str, old_address: str, new_address: str) -> HostMove:
    return HostMove(
        old_host=old, new_host=new, old_addresses=(old_address,), new_addresses=(new_address,)
    )


MOVES = {
    "h1": move("h1", "h2", "198.18.0.1", "198.18.0.2"),
    "h2": move("h2", "h3", "198.18.0.2", "198.18.0.3"),
    "h4": move("h4", "h4", "198.18.0.4", "198.18.0.4"),  # stays where it was
}


def context(
    tmp_path: Path, rewrite_files: str | None, *, rank: int = 0, moves: dict[str, HostMove] = MOVES
) -> RestartContext:
    address_map = {
        old: new
        for m in moves.values()
        for old, new in zip(m.old_addresses, m.new_addresses, strict=True)
    }
    return RestartContext(
        job="job-1",
        checkpoint="ck-1",
        rank=rank,
        old_host="h1",
        new_host="h2",
        moves=moves,
        address_map=address_map,
        images_dir=tmp_path / "images",
        options={} if rewrite_files is None else {"rewrite_files": rewrite_files},
    )


def nothing_held(images_dir: Path) -> Iterable[images.RegularFile]:
    return ()


def rewrite(ctx: RestartContext, plugin: HostFiles | None = None) -> None:
    asyncio.run((plugin or HostFiles(held_files=nothing_held)).before_restore(ctx))


def test_only_whole_host_names_and_addresses_are_replaced() -> None:
    """h1 is not touched inside h10, rack-h1, h1_x or h1.example.org, nor 198.18.0.1 inside
    198.18.0.11 or 10.198.18.0.1; a trailing full stop, a :port, brackets, an IPv4-mapped form
    and line ends are token boundaries."""
    tokens = {"h1": "h2", "198.18.0.1": "198.18.0.2", "2001:db8::1": "2001:db8::2"}
    data = (
        b"h1 h10 rack-h1 h1_x h1.example.org x.h1 (h1) h1.\n"
        b"h1:7000 user@h1 198.18.0.1 198.18.0.11 10.198.18.0.1 198.18.0.1:80 198.18.0.1.\n"
        b"[2001:db8::1]:80 2001:db8::1:5 2001:db8::10 ::ffff:198.18.0.1,h1\r\n"
    )

    new, count = replace_tokens(data, tokens)

    assert new == (
        b"h2 h10 rack-h1 h1_x h1.example.org x.h1 (h2) h2.\n"
        b"h2:7000 user@h2 198.18.0.2 198.18.0.11 10.198.18.0.1 198.18.0.2:80 198.18.0.2.\n"
        b"[2001:db8::2]:80 2001:db8::1:5 2001:db8::10 ::ffff:198.18.0.2,h2\r\n"
    )
    assert count == 11


def test_chains_and_swaps_are_replaced_in_one_simultaneous_pass() -> None:
    """With h1->h2 and h2->h3, "h1 h2" becomes "h2 h3" (not "h3 h3"); a swap swaps."""
    assert replace_tokens(b"h1 h2", {"h1": "h2", "h2": "h3"}) == (b"h2 h3", 2)
    assert replace_tokens(b"h1,h2", {"h1": "h2", "h2": "h1"}) == (b"h2,h1", 2)


def test_bytes_that_are_not_text_pass_through_unchanged() -> None:
    """The file is handled as bytes: other encodings and binary bytes are kept as they are."""
    data = "h1 caf\u00e9 \xff\x00 h1".encode("latin-1")
    assert replace_tokens(data, {"h1": "h2"}) == ("h2 caf\u00e9 \xff\x00 h2".encode("latin-1"), 2)


def test_listed_files_name_the_new_hosts_and_addresses(tmp_path: Path) -> None:
    """Every listed file gets the moves' host names and the address map's addresses; hosts
    that stay where they were are left alone."""
    peers = tmp_path / "peers.txt"
    peers.write_text("h1 198.18.0.1:7000\nh2 198.18.0.2:7000\nh4 198.18.0.4:7000\n")
    config = tmp_path / "app.conf"
    config.write_text("coordinator = h1\n")

    rewrite(context(tmp_path, f"{peers}, {config}"))

    assert peers.read_text() == "h2 198.18.0.2:7000\nh3 198.18.0.3:7000\nh4 198.18.0.4:7000\n"
    assert config.read_text() == "coordinator = h2\n"


def test_a_file_is_replaced_atomically_with_its_mode(tmp_path: Path) -> None:
    """The rewritten file is a new file renamed into place (a hard link to the old content
    keeps it), with the old mode, and no temporary file is left behind."""
    peers = tmp_path / "peers.txt"
    peers.write_text("h1\n")
    peers.chmod(0o640)
    os.link(peers, tmp_path / "old-peers.txt")

    rewrite(context(tmp_path, str(peers)))

    assert peers.read_text() == "h2\n"
    assert (tmp_path / "old-peers.txt").read_text() == "h1\n"
    assert stat.S_IMODE(peers.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old-peers.txt", "peers.txt"]


def test_rewriting_a_shared_file_for_a_second_rank_is_harmless(tmp_path: Path) -> None:
    """A file listed for two ranks of one host (h1->h2, h2->h3) is rewritten once: the second
    rank's pass finds the content it wrote and leaves it, where a second replacement would
    have turned h2 into h3."""
    peers = tmp_path / "peers.txt"
    peers.write_text("h1 h2\n")
    plugin = HostFiles(held_files=nothing_held)

    rewrite(context(tmp_path, str(peers), rank=0), plugin)
    rewrite(context(tmp_path, str(peers), rank=1), plugin)
    rewrite(context(tmp_path, str(peers), rank=2))  # another instance of the plugin

    assert peers.read_text() == "h2 h3\n"


def test_a_file_changed_after_the_rewrite_is_rewritten_again(tmp_path: Path) -> None:
    """Only the content the plugin wrote is recognised: a file replaced since is rewritten."""
    peers = tmp_path / "peers.txt"
    peers.write_text("h1\n")
    rewrite(context(tmp_path, str(peers)))
    peers.write_text("h1 again\n")

    rewrite(context(tmp_path, str(peers)))

    assert peers.read_text() == "h2 again\n"


def test_rank_placeholder_names_each_rank_file(tmp_path: Path) -> None:
    """{rank} in a path stands for the rank being restored."""
    for rank in (0, 1):
        (tmp_path / f"peers-{rank}.txt").write_text(f"rank {rank} talks to h1\n")

    rewrite(context(tmp_path, str(tmp_path / "peers-{rank}.txt"), rank=1))

    assert (tmp_path / "peers-0.txt").read_text() == "rank 0 talks to h1\n"
    assert (tmp_path / "peers-1.txt").read_text() == "rank 1 talks to h2\n"


def test_a_missing_file_fails_the_restore_and_changes_nothing(tmp_path: Path) -> None:
    """A listed file that does not exist fails closed with an error naming it, before any
    listed file is rewritten."""
    present = tmp_path / "present.txt"
    present.write_text("h1\n")
    missing = tmp_path / "missing.txt"

    with pytest.raises(PluginError, match=re.escape(f"{missing} is missing on h2")) as caught:
        rewrite(context(tmp_path, f"{present},{missing}"))

    assert caught.value.host == "h2" and caught.value.phase == "before_restore"
    assert present.read_text() == "h1\n"


def test_a_file_the_rank_holds_open_fails_the_restore(tmp_path: Path) -> None:
    """A listed file the dumped rank holds open (its size is in the images) fails closed with
    an error naming it, and is left as it was."""
    held = tmp_path / "held.log"
    held.write_text("h1\n")

    def holding(images_dir: Path) -> Iterable[images.RegularFile]:
        assert images_dir == tmp_path / "images"
        return [images.RegularFile(str(held), 3, 0o100644, by_fd=True, ghost=False)]

    with pytest.raises(PluginError, match=f"holds it open .*: {re.escape(str(held))} "):
        rewrite(context(tmp_path, str(held)), HostFiles(held_files=holding))

    assert held.read_text() == "h1\n"


def test_a_relative_path_is_refused(tmp_path: Path) -> None:
    """Paths are absolute: the agent's working directory means nothing to the rank."""
    with pytest.raises(PluginError, match=r"peers\.txt is not an absolute path"):
        rewrite(context(tmp_path, "peers.txt"))


def test_without_the_option_nothing_is_read(tmp_path: Path) -> None:
    """With no rewrite_files option (or an empty one) the plugin does nothing, not even look
    at the images."""

    def unexpected(images_dir: Path) -> Iterable[images.RegularFile]:
        raise AssertionError("the images were inspected")

    for value in (None, "", " , "):
        rewrite(context(tmp_path, value), HostFiles(held_files=unexpected))


NOBODY_UID, NOBODY_GID = 65534, 65534


def owned_by_nobody(ctx: RestartContext) -> RestartContext:
    from dataclasses import replace

    return replace(ctx, owner_uid=NOBODY_UID, owner_gid=NOBODY_GID, owner_groups=())


def test_files_are_rewritten_with_the_owners_rights_never_roots() -> None:
    """A user's restart may name any path: root's file is refused (the owner could not write
    it), the owner's own file is rewritten, and nothing else changed."""
    import shutil
    import tempfile

    tmp_path = Path(tempfile.mkdtemp(prefix="crctl-owner-"))
    tmp_path.chmod(0o777)
    try:
        _owner_rights(tmp_path)
    finally:
        shutil.rmtree(tmp_path)


def _owner_rights(tmp_path: Path) -> None:
    root_file = tmp_path / "roots.conf"
    root_file.write_text("peer h1\n")
    root_file.chmod(0o644)
    secret = tmp_path / "secret"
    secret.write_text("h1\n")
    secret.chmod(0o600)
    theirs = tmp_path / "theirs.conf"
    theirs.write_text("peer h1\n")
    os.chown(theirs, NOBODY_UID, NOBODY_GID)

    for refused in (root_file, secret):
        with pytest.raises(PluginError, match=f"cannot rewrite {refused}: Permission denied"):
            rewrite(owned_by_nobody(context(tmp_path, str(refused))))
        assert "h1" in refused.read_text()
    rewrite(owned_by_nobody(context(tmp_path, str(theirs))))
    assert theirs.read_text() == "peer h2\n" and theirs.stat().st_uid == NOBODY_UID


def test_a_file_naming_a_host_whose_ranks_were_split_is_refused(tmp_path: Path) -> None:
    peers = tmp_path / "peers.txt"
    peers.write_text("rank0 198.18.0.5:7100\nrank1 h4:7101\n")
    split = HostSplit(old_host="h5", new_hosts=("h6", "h7"), old_addresses=("198.18.0.5",))
    ctx = replace(context(tmp_path, str(peers)), splits={"h5": split})
    with pytest.raises(
        PluginError,
        match=re.escape(
            f"{peers} names 198.18.0.5, but the ranks of h5 go to h6, h7, so it has no single new "
            "name or address: keep h5's ranks on one host, or leave the file out of rewrite_files"
        ),
    ):
        rewrite(ctx)
    assert peers.read_text() == "rank0 198.18.0.5:7100\nrank1 h4:7101\n"
    peers.write_text("rank1 h4:7101 h50\n")  # h50 is another host
    rewrite(ctx)
    assert peers.read_text() == "rank1 h4:7101 h50\n"
