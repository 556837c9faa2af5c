"""Which network lock a dump left behind.

After a dump that killed its tasks, CRIU leaves their TCP connections locked on the dump host
(FINDINGS 12) so that the peer sees silence rather than a reset. With the nftables method that
lock is one table, ``inet CRIU-<run id>``, which whoever owns the host removes once the
connections are gone (a restore in place removes it itself). CRIU formats the name into 32
bytes, so the run id is cut: the name is best read from here, not rebuilt from the log (in
``swrk`` mode the log shows two run ids, and the table uses the second)."""

from __future__ import annotations

from pathlib import Path

from pycriu import images

# CRIU's internal enum, as stored in inventory.img (not the RPC enum).
_INVENTORY_NFTABLES = 1
_TABLE_BYTES = 32  # CRIU: char table[32] holding "inet CRIU-<run id>" and its NUL


def nft_lock_table(images_dir: Path) -> str | None:
    """The nftables table (family inet) CRIU locked the dumped connections in, or None when
    the dump used another lock method (iptables rules, or none)."""
    with (images_dir / "inventory.img").open("rb") as fh:
        inventory = images.load(fh)["entries"][0]
    if inventory.get("network_lock_method") != _INVENTORY_NFTABLES:
        return None
    run_id = inventory.get("dump_criu_run_id")
    if not run_id:
        return None
    full = f"inet CRIU-{run_id}"[: _TABLE_BYTES - 1]
    return full.removeprefix("inet ")
