"""unix_seqpacket: SOCK_SEQPACKET Unix sockets between the rank and a child: a socketpair on
which the rank asks and the child answers, and a connection the child made to a listener the
rank bound in the work dir, on which the child asks and the rank answers.

Covers: Unix sequenced-packet sockets (CRIU restores each record with its boundaries, queued
records, a path-bound listener and the connection accepted from it). Every record is a
message (_common.make_message) of its own length, read with a buffer larger than any
record, so a record split, merged, lost, repeated or corrupted is an error; WINDOW requests
of the rank's are queued at a time. The child checks what it reads and sends a record
"ERROR ..." ahead of its next request if something was wrong, which the rank records. Progress:
records checked by the rank (answers on the pair, requests on the connection)."""

from __future__ import annotations

import socket

from tests.workloads.catalogue import _common

WINDOW = 2
BIGGEST = 8000
ASK, ANSWER = b"rank-asks", b"child-answers"
CHILD_ASKS, RANK_ANSWERS = b"child-asks", b"rank-answers"


def child(pair: socket.socket, path: str) -> None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.connect(path)
    seq = 0
    while True:
        problems = [_common.check_message(pair.recv(BIGGEST * 2), ASK, seq, BIGGEST)]
        pair.send(_common.make_message(ANSWER, seq, BIGGEST))
        conn.send(_common.make_message(CHILD_ASKS, seq, BIGGEST))
        problems.append(_common.check_message(conn.recv(BIGGEST * 2), RANK_ANSWERS, seq, BIGGEST))
        for problem in problems:
            if problem is not None:
                conn.send(b"ERROR " + problem.encode())
        seq += 1


def main() -> None:
    args, status = _common.start("unix_seqpacket")
    path = str(args.work_dir / "seqpacket.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(1)
    pair, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = _common.fork_child(lambda: child(other, path))
    _common.at_exit(lambda: _common.kill_and_reap([pid]))
    other.close()
    conn, _ = listener.accept()
    listener.close()
    asked = seq = 0
    while True:
        while asked - seq < WINDOW:
            pair.send(_common.make_message(ASK, asked, BIGGEST))
            asked += 1
        request = conn.recv(BIGGEST * 2)
        while request.startswith(b"ERROR "):
            status.error(f"the child: {request[6:].decode(errors='replace')}")
            request = conn.recv(BIGGEST * 2)
        status.check(_common.check_message(request, CHILD_ASKS, seq, BIGGEST))
        conn.send(_common.make_message(RANK_ANSWERS, seq, BIGGEST))
        status.check(_common.check_message(pair.recv(BIGGEST * 2), ANSWER, seq, BIGGEST))
        seq += 1
        _common.pause(0.005)


if __name__ == "__main__":
    main()
