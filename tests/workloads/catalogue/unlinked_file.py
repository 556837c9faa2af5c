"""unlinked_file: a file in the work dir opened, filled and unlinked at once, then used through
two descriptors: the first open and a second one reopened through /proc/self/fd (a separate
open file description, with its own offset, on the same deleted inode).

Covers: a deleted file still open, which CRIU carries in the images as a ghost file (kept
under CRIU's default --ghost-limit of 1 MiB: the file is 256 KiB) and recreates at restore,
both descriptors onto the one inode, each at its own offset. The file holds RECORDS records;
record i, generation g, is a message (_common.make_message) of tag "record-<i>" and sequence
g, padded to RECORD bytes. Each operation rewrites the record after the last one written
(write() at the first descriptor's offset, which must be where it was left, wrapping round),
then reads that record and a random one through the second descriptor (pread), and checks
them against the generations it wrote; both descriptors must still be one inode with no
links, named "... (deleted)". Progress: operations checked."""

from __future__ import annotations

import os
import random
import stat

from tests.workloads.catalogue import _common

RECORD = 2048
RECORDS = 128
MAX_BODY = RECORD - _common.MESSAGE_HEADER.size - 16


def record(index: int, generation: int) -> bytes:
    data = _common.make_message(f"record-{index}".encode(), generation, MAX_BODY)
    return data.ljust(RECORD, b"\0")


def check_record(data: bytes, index: int, generation: int) -> str | None:
    """None if `data` is record `index` at `generation`; its length follows from the
    generation its header names, the rest of RECORD is padding."""
    tag = f"record-{index}".encode()
    if len(data) != RECORD:
        return f"record {index}: read {len(data)} bytes, not {RECORD}"
    found = _common.message_seq(data)
    size = _common.MESSAGE_HEADER.size + len(_common.message_body(tag, found, MAX_BODY))
    return _common.check_message(data[:size], tag, generation, MAX_BODY)


def check_descriptors(first: int, second: int) -> list[str | None]:
    a, b = os.fstat(first), os.fstat(second)
    problems: list[str | None] = []
    if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
        problems.append("the two descriptors are on different files")
    if a.st_nlink != 0 or not stat.S_ISREG(a.st_mode):
        problems.append(f"the file has {a.st_nlink} links (mode {a.st_mode:o}), expected 0")
    if not os.readlink(f"/proc/self/fd/{first}").endswith(" (deleted)"):
        problems.append(f"fd {first} is {os.readlink(f'/proc/self/fd/{first}')!r}, not deleted")
    return problems


def main() -> None:
    args, status = _common.start("unlinked_file")
    path = args.work_dir / "unlinked.dat"
    first = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    for index in range(RECORDS):
        os.write(first, record(index, 0))
    second = os.open(f"/proc/self/fd/{first}", os.O_RDONLY)
    os.unlink(path)
    os.lseek(first, 0, os.SEEK_SET)
    generations = [0] * RECORDS
    choose = random.Random(args.rank)
    index = 0
    while True:
        problems = check_descriptors(first, second)
        offset = os.lseek(first, 0, os.SEEK_CUR)
        if offset != index * RECORD:
            problems.append(f"the first descriptor is at {offset}, expected {index * RECORD}")
            os.lseek(first, index * RECORD, os.SEEK_SET)
        generations[index] += 1
        os.write(first, record(index, generations[index]))
        for checked in (index, choose.randrange(RECORDS)):
            data = os.pread(second, RECORD, checked * RECORD)
            problems.append(check_record(data, checked, generations[checked]))
        index = (index + 1) % RECORDS
        if index == 0:
            os.lseek(first, 0, os.SEEK_SET)
        status.check_all(problems)
        _common.pause(0.01)


if __name__ == "__main__":
    main()
