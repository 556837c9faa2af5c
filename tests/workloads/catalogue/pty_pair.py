"""pty_pair: a pseudo-terminal (os.openpty) whose slave side is the controlling terminal of a
child in a session of its own, which answers every line the rank types on the master side.

Covers: a pty pair inside the rank (CRIU restores both ends, the terminal's settings, window
size and unread input, and the child's session and controlling terminal). The terminal has
echo off, canonical (line) mode and output processing (\\n becomes \\r\\n). The rank keeps
WINDOW lines typed ahead ("<seq> <hex payload>"); for each the child answers "<seq> <crc32 of
the payload> <rows>x<cols> fg=<foreground process group>", and the rank checks the whole
answer line: the sequence number (none lost or repeated), the checksum, the window
size it set, the child's own group in the foreground, and the \\r\\n ending (no echo: an echoed
line would be an unexpected answer). The child reports a skipped line itself ("ERROR ...").
Progress: answers checked."""

from __future__ import annotations

import fcntl
import os
import struct
import termios
import zlib

from tests.workloads.catalogue import _common

WINDOW = 3
ROWS, COLS = 33, 101
WINSIZE = struct.Struct("HHHH")


def payload(seq: int) -> bytes:
    return _common.message_body(b"pty", seq, 400).hex().encode()


def answer_line(seq: int, data: bytes, rows: int, cols: int, foreground: int) -> bytes:
    return f"{seq} {zlib.crc32(data):08x} {rows}x{cols} fg={foreground}".encode()


def answer(slave: int) -> None:
    """The child: a session leader whose controlling terminal is the slave."""
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    expected = 0
    pending = b""
    while True:
        pending += os.read(slave, 8192)
        *lines, pending = pending.split(b"\n")
        for line in lines:
            seq_text, _, data = line.partition(b" ")
            seq = int(seq_text) if seq_text.isdigit() else -1
            if seq != expected:
                os.write(slave, f"ERROR line {seq}, expected {expected}\n".encode())
            rows, cols, _, _ = WINSIZE.unpack(fcntl.ioctl(slave, termios.TIOCGWINSZ, bytes(8)))
            reply = answer_line(seq, data, rows, cols, os.tcgetpgrp(slave))
            os.write(slave, reply + b"\n")
            expected = seq + 1


def main() -> None:
    _, status = _common.start("pty_pair")
    master, slave = os.openpty()
    fcntl.ioctl(master, termios.TIOCSWINSZ, WINSIZE.pack(ROWS, COLS, 0, 0))
    attributes = termios.tcgetattr(slave)
    attributes[3] = (attributes[3] & ~termios.ECHO) | termios.ICANON
    termios.tcsetattr(slave, termios.TCSANOW, attributes)
    child = _common.fork_child(lambda: answer(slave))
    _common.at_exit(lambda: _common.kill_and_reap([child]))
    os.close(slave)
    typed = answered = 0
    buffer = b""
    while True:
        while typed - answered < WINDOW:
            os.write(master, str(typed).encode() + b" " + payload(typed) + b"\n")
            typed += 1
        while b"\r\n" not in buffer:
            try:
                buffer += os.read(master, 8192)
            except OSError as exc:  # EIO: the slave side is closed (the child died)
                status.error(f"the terminal: {exc!r}")
                _common.idle_forever()
        line, _, buffer = buffer.partition(b"\r\n")
        want = answer_line(answered, payload(answered), ROWS, COLS, child)
        status.check(None if line == want else f"answer {line[:80]!r}, expected {want!r}")
        answered += 1
        _common.pause(0.005)


if __name__ == "__main__":
    main()
