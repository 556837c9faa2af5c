"""big_memory: --memory-mib MiB (default 256) of anonymous memory filled with a pattern that
differs on every page, checked page by page and partly rewritten as it runs.

Covers: a large address space (CRIU's page dump, pre-dumps and dirty-page tracking, lazy
restore). Each page starts with its index and generation and has a CRC-32 recorded in a
table. Each operation checks SWEEP pages in order (the whole memory over time) and one page
at random against the table, then rewrites one random page with its next generation (so
incremental dumps have dirty pages to carry). A page whose checksum differs is an error.
Progress: operations checked."""

from __future__ import annotations

import argparse
import random
import struct
import zlib

from tests.workloads.catalogue import _common

PAGE = 4096
SWEEP = 64
HEADER = struct.Struct("!QQ")  # page index, generation
FILLER = bytes(random.Random(14).randbytes(PAGE - HEADER.size))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--memory-mib", type=int, default=256, help="memory to hold and check")


def page_content(index: int, generation: int) -> bytes:
    return HEADER.pack(index, generation) + FILLER


class Memory:
    def __init__(self, mib: int) -> None:
        self.pages = mib * (1 << 20) // PAGE
        self.data = bytearray(self.pages * PAGE)
        self.checksums = [0] * self.pages
        self.generations = [0] * self.pages
        for index in range(self.pages):
            self.write(index, 0)

    def write(self, index: int, generation: int) -> None:
        content = page_content(index, generation)
        self.data[index * PAGE : (index + 1) * PAGE] = content
        self.checksums[index] = zlib.crc32(content)
        self.generations[index] = generation

    def check(self, index: int) -> str | None:
        page = memoryview(self.data)[index * PAGE : (index + 1) * PAGE]
        if zlib.crc32(page) == self.checksums[index]:
            return None
        found_index, found_generation = HEADER.unpack_from(page)
        return (
            f"page {index} (generation {self.generations[index]}) differs; it says page "
            f"{found_index} generation {found_generation}"
        )


def main() -> None:
    args, status = _common.start("big_memory", add_extra=add_arguments)
    memory = Memory(args.extra.memory_mib)
    choose = random.Random(args.rank)
    cursor = 0
    while True:
        indices = [(cursor + i) % memory.pages for i in range(SWEEP)]
        indices.append(choose.randrange(memory.pages))
        cursor = (cursor + SWEEP) % memory.pages
        problems = [p for p in map(memory.check, indices) if p]
        status.check_all(problems)
        dirty = choose.randrange(memory.pages)
        memory.write(dirty, memory.generations[dirty] + 1)
        _common.pause(0.01)


if __name__ == "__main__":
    main()
