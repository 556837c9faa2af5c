"""ipv6_loopback: a TCP connection over ::1 inside one rank, between a server thread that
checks and answers and the main thread that checks the answers.

Covers: an IPv6 TCP connection with both ends in the same process, on the loopback device of
the rank's network namespace (it moves with the rank: nothing to rewrite). Messages are
sequence-numbered and checksummed both ways. Progress: answers checked; a bad request is
reported by the server thread as an error too."""

from __future__ import annotations

import socket
import threading

from tests.workloads.catalogue import _common

LOOPBACK = "::1"


def answer_forever(listener: socket.socket, status: _common.Status) -> None:
    sock, _ = listener.accept()
    listener.close()
    seq = 0
    try:
        while True:
            problem = _common.check_message(_common.recv_frame(sock), b"ask", seq)
            if problem:
                status.error(f"server thread: {problem}")
            sock.sendall(_common.frame(_common.make_message(b"answer", seq)))
            seq += 1
    except (OSError, ValueError) as exc:
        status.error(f"server thread: {exc!r}")


def main() -> None:
    args, status = _common.start("ipv6_loopback")
    listener = _common.listen_tcp(LOOPBACK, args.listen_port(args.rank))
    threading.Thread(target=answer_forever, args=(listener, status), daemon=True).start()
    sock = _common.connect_tcp(LOOPBACK, args.listen_port(args.rank))
    seq = 0
    try:
        while True:
            sock.sendall(_common.frame(_common.make_message(b"ask", seq)))
            status.check(_common.check_message(_common.recv_frame(sock), b"answer", seq))
            seq += 1
            _common.pause(0.01)
    except (OSError, ValueError) as exc:
        status.error(f"connection: {exc!r}")
        _common.idle_forever()


if __name__ == "__main__":
    main()
