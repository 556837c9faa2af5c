"""nginx_download (2 ranks): rank 0 runs nginx (Debian's, as its child: a root master with
`user www-data;` workers, listening on A0:P only, everything in the work dir) serving a file
of --file-mib MiB (default 64) with a pattern that differs in every 4 KiB block; rank 1
downloads it again and again over one keep-alive connection, reading slowly (--rate-mib,
default 3 MiB/s, so a download spans a checkpoint and a move) and checking every byte; rank 0
holds its own keep-alive connection fetching random byte ranges of the file.

Covers: a real web server whose workers dropped privileges, with a long transfer in flight
when the job is frozen: the client's receive queue and the server's send queue full (nginx
blocked writing to the slow reader), moved with the connection. Each 4 KiB block of the file
starts with its index and is followed by the same 4088 random bytes, so a piece of the body
is checked against the pattern at its offset (a lost, repeated or corrupted piece is an
error). Each download must be answered 200 with the file's length and the ETag of the first
download; each range 206 with the range's bytes. The master dying is an error; SIGTERM stops
nginx (fast shutdown). Progress: chunks of --chunk-kib KiB (default 256) verified (rank 1),
ranges verified (rank 0)."""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import stat
import struct
import time
from pathlib import Path

from tests.workloads.catalogue import _clients, _common, _servers

BLOCK = 4096
INDEX = struct.Struct("!Q")
FILLER = random.Random(64).randbytes(BLOCK - INDEX.size)
PATH = "/pattern.bin"
WORKER_USER = "www-data"
PIECE = 64 << 10
RANGE = 64 << 10

CONF = """
{user}
worker_processes 2;
daemon off;
master_process on;
pid {work}/nginx.pid;
error_log {work}/error.log notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {work}/temp/body;
    proxy_temp_path {work}/temp/proxy;
    fastcgi_temp_path {work}/temp/fastcgi;
    uwsgi_temp_path {work}/temp/uwsgi;
    scgi_temp_path {work}/temp/scgi;
    default_type application/octet-stream;
    sendfile on;
    keepalive_timeout 600s;
    keepalive_requests 1000000;
    send_timeout 600s;
    server {{
        listen {listen};
        root {work}/www;
    }}
}}
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--file-mib", type=int, default=64, help="size of the served file")
    parser.add_argument("--rate-mib", type=float, default=3.0, help="download rate, MiB/s")
    parser.add_argument("--chunk-kib", type=int, default=256, help="a unit of progress")


def pattern(offset: int, size: int) -> bytes:
    """The file's bytes offset .. offset+size-1."""
    first, last = offset // BLOCK, (offset + size - 1) // BLOCK
    blocks = b"".join(INDEX.pack(i) + FILLER for i in range(first, last + 1))
    start = offset - first * BLOCK
    return blocks[start : start + size]


def check_piece(data: bytes, offset: int) -> str | None:
    if data == pattern(offset, len(data)):
        return None
    for at in range(0, len(data), BLOCK):
        if data[at : at + BLOCK] != pattern(offset + at, len(data[at : at + BLOCK])):
            return f"bytes at offset {offset + at} differ from the pattern"
    return f"bytes at offset {offset} differ from the pattern"


def write_file(path: Path, mib: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    step = 1 << 20
    with open(path, "wb") as out:
        for offset in range(0, mib << 20, step):
            out.write(pattern(offset, step))


def closed_to_others(path: Path) -> Path | None:
    """The first folder above `path` that other users cannot enter (nginx's workers could
    not reach the file), if any."""
    for folder in [path, *path.parents]:
        if not folder.stat().st_mode & stat.S_IXOTH:
            return folder
    return None


def start_server(args: _common.Args) -> _servers.Child:
    work = args.work_dir.resolve()
    write_file(work / "www" / PATH.lstrip("/"), args.extra.file_mib)
    root = os.geteuid() == 0
    if root and (closed := closed_to_others(work / "www")) is not None:
        raise PermissionError(f"{WORKER_USER} cannot enter {closed}: nginx's workers run as it")
    (work / "temp").mkdir(exist_ok=True)
    address = f"[{args.own_address}]" if ":" in args.own_address else args.own_address
    conf = work / "nginx.conf"
    conf.write_text(
        CONF.format(
            user=f"user {WORKER_USER};" if root else "",
            work=work,
            listen=f"{address}:{args.listen_port(0)}",
        )
    )
    program = _servers.find_program("nginx", "/usr/sbin/nginx")
    argv = [program, "-p", str(work), "-c", str(conf), "-e", str(work / "error.log")]
    return _servers.spawn("nginx", argv, log=work / "nginx.log", stop_signal=signal.SIGTERM)


def fetch_ranges(
    stream: _clients.Stream, args: _common.Args, status: _common.Status, server: _servers.Child
) -> None:
    size = args.extra.file_mib << 20
    choose = random.Random(args.rank)
    while True:
        first = choose.randrange(size - RANGE)
        _clients.http_get(stream, args.addresses[0], PATH, (first, first + RANGE - 1))
        head = _clients.http_head(stream)
        body = stream.read_exact(head.content_length) if head.content_length > 0 else b""
        if head.status != 206 or len(body) != RANGE:
            status.error(f"range {first}: status {head.status} with {len(body)} bytes")
        else:
            status.check(check_piece(body, first))
        if (problem := server.problem()) is not None:
            status.error(problem)
            _common.idle_forever()
        _common.pause(0.02)


def download(stream: _clients.Stream, args: _common.Args, status: _common.Status) -> None:
    size = args.extra.file_mib << 20
    chunk = args.extra.chunk_kib << 10
    piece_time = PIECE / (args.extra.rate_mib * (1 << 20))
    etag: str | None = None
    while True:
        _clients.http_get(stream, args.addresses[0], PATH)
        head = _clients.http_head(stream)
        if head.status != 200 or head.content_length != size:
            raise _clients.ProtocolError(f"GET: status {head.status}, {head.content_length} bytes")
        etag = etag or head.headers.get("etag")
        if head.headers.get("etag") != etag:
            status.error(f"the file's ETag went from {etag} to {head.headers.get('etag')}")
        offset, pending = 0, bytearray()
        while offset < size:
            data = stream.read_some(min(PIECE, size - offset - len(pending)))
            pending += data
            if len(pending) >= chunk or offset + len(pending) == size:
                status.check(check_piece(bytes(pending), offset))
                offset += len(pending)
                pending.clear()
            time.sleep(piece_time * len(data) / PIECE)


def main() -> None:
    args, status = _common.start("nginx_download", ranks=2, add_extra=add_arguments)
    try:
        server = start_server(args) if args.rank == 0 else None
        sock = _common.connect_tcp(args.addresses[0], args.listen_port(0))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = _clients.Stream(sock)
        if server is not None:
            fetch_ranges(stream, args, status, server)
        else:
            download(stream, args, status)
    except (OSError, ValueError, _clients.ProtocolError, _servers.ProgramMissing) as exc:
        status.error(f"nginx_download: {exc!r}")
        _common.idle_forever()


if __name__ == "__main__":
    main()
