"""pipes_fifo: messages to a child through an anonymous pipe and back through a named FIFO in
the work dir, with several messages in flight.

Covers: pipe buffers with unread data in them (CRIU dumps and refills pipe contents) and a
FIFO opened by path. The parent writes sequence-numbered messages down the pipe, keeping up
to WINDOW unanswered; the child checks each (sequence, checksum, content) and sends back
"<seq> ok" or "<seq> ERROR ..." through the FIFO; the parent checks the answers arrive in
order, one per message. Progress: answers checked."""

from __future__ import annotations

import os

from tests.workloads.catalogue import _common

WINDOW = 8
TAG = b"pipe"


def check_answer(line: str, expected_seq: int) -> str | None:
    seq, _, verdict = line.partition(" ")
    if seq != str(expected_seq):
        return f"answer {line!r}, expected one for message {expected_seq}"
    if verdict != "ok":
        return f"the child says: {verdict}"
    return None


def child(reader: int, fifo: str) -> None:
    answers = os.open(fifo, os.O_WRONLY)
    expected = 0
    while True:
        message = _common.read_frame(lambda size: os.read(reader, size))
        problem = _common.check_message(message, TAG, expected)
        verdict = "ok" if problem is None else f"ERROR {problem}"
        os.write(answers, f"{expected} {verdict}\n".encode())
        expected += 1


def main() -> None:
    args, status = _common.start("pipes_fifo")
    fifo = args.work_dir / "answers.fifo"
    if fifo.exists():
        fifo.unlink()
    os.mkfifo(fifo)
    reader, writer = os.pipe()
    pid = _common.fork_child(lambda: child(reader, str(fifo)))
    _common.at_exit(lambda: _common.kill_and_reap([pid]))
    os.close(reader)
    answers = os.fdopen(os.open(fifo, os.O_RDONLY), "rb", buffering=0)
    sent = answered = 0
    pending = b""
    while True:
        while sent - answered < WINDOW:
            os.write(writer, _common.frame(_common.make_message(TAG, sent)))
            sent += 1
        data = answers.read(4096)
        if not data:
            status.error("the FIFO closed: the child is gone")
            _common.pause(1)
            continue
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            problem = check_answer(line.decode(errors="replace"), answered)
            status.check(problem)
            answered += 1
        _common.pause(0.005)


if __name__ == "__main__":
    main()
