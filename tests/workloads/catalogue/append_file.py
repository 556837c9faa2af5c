"""append_file: a file in the work dir held open O_APPEND, one line "<seq>" written per
operation, and re-read (a separate read-only open, closed again) to check the lines.

Covers: a regular file open for appending (CRIU restores the descriptor's flags and position,
and checks the file on restore). Each operation writes the next line, checks the descriptor
still has O_APPEND, and reads whatever the file gained since the last check.

The rule the checker applies, line by line from the start of the file:
- a line must be a decimal number;
- one more than the line before it: the same life going on;
- at most the line before it: a NEW LIFE begins: this process (or its ancestor in the
  checkpoint chain) was restored from a checkpoint taken when its counter was one less than
  the line, while an earlier life went on writing after that checkpoint. Counted, not an error;
- more than one more than the line before it: lines were lost (error);
- after reading, the file must end with this process's own latest line (error otherwise:
  its write was lost, or someone else appended).

So across a leave-running checkpoint then a restart from it, the lines the first life wrote
after the checkpoint (beyond the restored counter) are from a previous life and not errors.
Two lives appending at the same time would interleave and be reported: only one may run.

What the restored file holds (crctl's rule, ARCHITECTURE.md "Files a restart finds"):
CRIU records no size for a file open O_WRONLY|O_APPEND (criu/files-reg.c, should_check_size:
a log) and reopens it as it finds it, so a restart from a leave-running checkpoint after the
file grew works, and the file holds every line both lives wrote, in order: the abandoned
life's lines after the checkpoint stay, the restored process appends after them (O_APPEND
writes go to the end), numbering on from its restored counter. The checker reads that as a
new life (above). crctl never truncates or rewrites a user's file to make a restart fit.
Progress: operations checked."""

from __future__ import annotations

import fcntl
import os

from tests.workloads.catalogue import _common


class AppendChecker:
    """The file as read so far: where the next unread byte is and the last line seen."""

    def __init__(self) -> None:
        self.offset = 0
        self.last = 0
        self.lives = 1

    def check(self, new: bytes, own_last: int) -> list[str]:
        """Check the bytes the file gained since the last call (`new`, read from `offset`);
        a trailing partial line is left for the next call."""
        complete = new[: new.rfind(b"\n") + 1]
        self.offset += len(complete)
        problems = []
        for raw in complete.splitlines():
            try:
                line = int(raw)
            except ValueError:
                problems.append(f"unreadable line {raw[:40]!r} after {self.last}")
                continue
            if line > self.last + 1:
                problems.append(f"lines {self.last + 1}..{line - 1} are missing")
            elif line <= self.last:
                self.lives += 1
            self.last = line
        if self.last != own_last:
            problems.append(f"the file ends at line {self.last}, this process wrote {own_last}")
        return problems


def read_from(path: str, offset: int) -> bytes:
    with open(path, "rb") as reader:
        reader.seek(offset)
        return reader.read()


def main() -> None:
    args, status = _common.start("append_file")
    path = str(args.work_dir / "appended.log")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    checker = AppendChecker()
    seq = 0
    while True:
        seq += 1
        os.write(fd, f"{seq}\n".encode())
        problems = checker.check(read_from(path, checker.offset), seq)
        if not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:
            problems.append("the descriptor lost O_APPEND")
        status.check_all(problems)
        _common.pause(0.02)


if __name__ == "__main__":
    main()
