"""unix_sockets: a child talking to its parent over three Unix stream connections: a
socketpair, a connection to a listener bound to a path in the work dir, and one to a listener
in the abstract namespace.

Covers: Unix sockets of each kind, connected and listening (CRIU must restore both ends, the
bound path and the abstract name, and unread data). The parent sends sequence-numbered
messages on each connection in turn; the child checks each and answers with the matching
reply message (or an error text); the parent checks the reply. So both directions are checked
on every connection. Progress: replies checked."""

from __future__ import annotations

import os
import select
import socket

from tests.workloads.catalogue import _common

CHANNELS = (b"socketpair", b"path", b"abstract")


def reply_tag(tag: bytes) -> bytes:
    return b"re-" + tag


def answer(message: bytes, tag: bytes, expected_seq: int) -> bytes:
    """What the child sends back for `message`: the reply message, or why it is wrong."""
    problem = _common.check_message(message, tag, expected_seq)
    if problem is not None:
        return f"ERROR {problem}".encode()
    return _common.make_message(reply_tag(tag), expected_seq)


def child(pair_end: socket.socket, path: str, abstract: str) -> None:
    by_path = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    by_path.connect(path)
    by_path.sendall(b"p")
    by_name = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    by_name.connect(abstract)
    by_name.sendall(b"a")
    connections = {pair_end: b"socketpair", by_path: b"path", by_name: b"abstract"}
    expected = dict.fromkeys(connections, 0)
    while True:
        ready, _, _ = select.select(list(connections), [], [])
        for sock in ready:
            message = _common.recv_frame(sock)
            sock.sendall(_common.frame(answer(message, connections[sock], expected[sock])))
            expected[sock] += 1


def accept_one(listener: socket.socket, marker: bytes) -> socket.socket:
    sock, _ = listener.accept()
    if sock.recv(1) != marker:
        raise RuntimeError(f"the child's first byte on the {marker!r} connection is wrong")
    return sock


def main() -> None:
    args, status = _common.start("unix_sockets")
    path = args.work_dir / "stream.sock"
    if path.exists():
        path.unlink()
    abstract = f"\0crctl-workload-unix-{os.getpid()}-{abs(hash(str(args.work_dir)))}"
    path_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path_listener.bind(str(path))
    path_listener.listen(1)
    name_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    name_listener.bind(abstract)
    name_listener.listen(1)
    parent_end, child_end = socket.socketpair()
    pid = _common.fork_child(lambda: child(child_end, str(path), abstract))
    _common.at_exit(lambda: _common.kill_and_reap([pid]))
    child_end.close()
    connections = {
        b"socketpair": parent_end,
        b"path": accept_one(path_listener, b"p"),
        b"abstract": accept_one(name_listener, b"a"),
    }
    seq = 0
    while True:
        for tag, sock in connections.items():
            sock.sendall(_common.frame(_common.make_message(tag, seq)))
            reply = _common.recv_frame(sock)
            if reply.startswith(b"ERROR"):
                status.error(f"the child says: {reply.decode(errors='replace')}")
                continue
            problem = _common.check_message(reply, reply_tag(tag), seq)
            status.check(problem)
        seq += 1
        _common.pause(0.01)


if __name__ == "__main__":
    main()
