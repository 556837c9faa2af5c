"""Small stdlib clients for the third-party servers of the catalogue, each over one socket
that it never reopens (so a connection CRIU failed to carry is an error, not a reconnect):
Redis's RESP, memcached's text protocol, HTTP/1.1 keep-alive and PostgreSQL's v3 protocol
(simple queries, trust authentication only)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

CHUNK = 1 << 16


class ProtocolError(Exception):
    """The server said something the client cannot parse, or closed the connection."""


class Stream:
    """A socket read in lines and exact sizes through a buffer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def _fill(self) -> None:
        data = self.sock.recv(CHUNK)
        if not data:
            raise ProtocolError("the server closed the connection")
        self.buffer += data

    def readline(self) -> bytes:
        """The next line, without its CRLF."""
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > CHUNK:
                raise ProtocolError(f"a line longer than {CHUNK} bytes: {self.buffer[:60]!r}")
            self._fill()
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return line

    def read_exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def read_some(self, limit: int) -> bytes:
        """Up to `limit` bytes: what the buffer holds, else one recv."""
        if not self.buffer:
            self._fill()
        data = bytes(self.buffer[:limit])
        del self.buffer[:limit]
        return data

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)


# Redis: RESP2.


@dataclass(frozen=True)
class RespError:
    message: str


RespValue: TypeAlias = "bytes | int | str | RespError | list[RespValue] | None"


def resp_command(*args: bytes | str | int) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


class Resp:
    """Commands sent (several may be in flight: pipelining), replies read in order."""

    def __init__(self, sock: socket.socket) -> None:
        self.stream = Stream(sock)

    def send(self, *commands: Sequence[bytes | str | int]) -> None:
        self.stream.sendall(b"".join(resp_command(*command) for command in commands))

    def reply(self) -> RespValue:
        line = self.stream.readline()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RespError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.stream.read_exact(size + 2)
            return data[:-2]
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self.reply() for _ in range(count)]
        raise ProtocolError(f"not a RESP reply: {line[:60]!r}")

    def call(self, *args: bytes | str | int) -> RespValue:
        self.send(args)
        return self.reply()


# memcached: the text protocol.


class Memcache:
    def __init__(self, sock: socket.socket) -> None:
        self.stream = Stream(sock)

    def _store(self, verb: str, key: str, value: bytes, flags: int, extra: str = "") -> str:
        header = f"{verb} {key} {flags} 0 {len(value)}{extra}\r\n".encode()
        self.stream.sendall(header + value + b"\r\n")
        return self.stream.readline().decode(errors="replace")

    def set(self, key: str, value: bytes, flags: int = 0) -> str:
        return self._store("set", key, value, flags)

    def cas(self, key: str, value: bytes, flags: int, unique: int) -> str:
        return self._store("cas", key, value, flags, f" {unique}")

    def gets(self, key: str) -> tuple[bytes, int, int] | None:
        """(value, flags, cas unique) of `key`, None if it is not there."""
        self.stream.sendall(f"gets {key}\r\n".encode())
        line = self.stream.readline()
        if line == b"END":
            return None
        fields = line.split()
        if len(fields) != 5 or fields[0] != b"VALUE" or fields[1].decode() != key:
            raise ProtocolError(f"gets {key}: unexpected {line[:80]!r}")
        value = self.stream.read_exact(int(fields[3]) + 2)[:-2]
        end = self.stream.readline()
        if end != b"END":
            raise ProtocolError(f"gets {key}: {end[:60]!r} after the value, not END")
        return value, int(fields[2]), int(fields[4])

    def incr(self, key: str, by: int) -> int | str:
        """The new value, or the server's answer if it is not a number (NOT_FOUND...)."""
        self.stream.sendall(f"incr {key} {by}\r\n".encode())
        answer = self.stream.readline().decode(errors="replace")
        return int(answer) if answer.isdigit() else answer

    def delete(self, key: str) -> str:
        self.stream.sendall(f"delete {key}\r\n".encode())
        return self.stream.readline().decode(errors="replace")


# HTTP/1.1 on one keep-alive connection.


@dataclass(frozen=True)
class HttpHead:
    status: int
    headers: dict[str, str]

    @property
    def content_length(self) -> int:
        return int(self.headers.get("content-length", "-1"))


def http_get(
    stream: Stream, host: str, path: str, byte_range: tuple[int, int] | None = None
) -> None:
    """Send a GET (bytes first..last inclusive if `byte_range`); read its head with http_head."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Connection: keep-alive"]
    if byte_range is not None:
        lines.append(f"Range: bytes={byte_range[0]}-{byte_range[1]}")
    stream.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())


def http_head(stream: Stream) -> HttpHead:
    status_line = stream.readline().decode(errors="replace")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP status line: {status_line[:80]!r}")
    headers = {}
    while line := stream.readline():
        name, sep, value = line.decode(errors="replace").partition(":")
        if not sep:
            raise ProtocolError(f"not an HTTP header: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return HttpHead(int(parts[1]), headers)


# PostgreSQL: protocol 3.0, simple queries.

PG_PROTOCOL = 196608
_INT32 = struct.Struct("!i")
_INT16 = struct.Struct("!h")


class PgError(Exception):
    """The server answered a query with an ErrorResponse."""


Row: TypeAlias = "list[str | None]"


class PgConnection:
    def __init__(self, sock: socket.socket, user: str, database: str) -> None:
        self.stream = Stream(sock)
        self.backend_pid = 0
        params = f"user\0{user}\0database\0{database}\0\0".encode()
        body = _INT32.pack(PG_PROTOCOL) + params
        self.stream.sendall(_INT32.pack(len(body) + 4) + body)
        while True:
            kind, payload = self._message()
            if kind == b"R":
                (code,) = _INT32.unpack_from(payload)
                if code != 0:
                    raise ProtocolError(f"the server asks for authentication {code}: use trust")
            elif kind == b"K":
                self.backend_pid = _INT32.unpack_from(payload)[0]
            elif kind == b"E":
                raise PgError(_error_text(payload))
            elif kind == b"Z":
                return

    def _message(self) -> tuple[bytes, bytes]:
        kind = self.stream.read_exact(1)
        (size,) = _INT32.unpack(self.stream.read_exact(4))
        if not 4 <= size <= 1 << 24:
            raise ProtocolError(f"a {kind!r} message of {size} bytes: the stream is corrupted")
        return kind, self.stream.read_exact(size - 4)

    def query(self, sql: str) -> list[Row]:
        """The rows of the last statement in `sql`; PgError if the server refused it."""
        body = sql.encode() + b"\0"
        self.stream.sendall(b"Q" + _INT32.pack(len(body) + 4) + body)
        rows: list[Row] = []
        error: str | None = None
        while True:
            kind, payload = self._message()
            if kind == b"T":
                rows = []
            elif kind == b"D":
                rows.append(_data_row(payload))
            elif kind == b"E":
                error = _error_text(payload)
            elif kind == b"Z":
                if error is not None:
                    raise PgError(error)
                return rows


def _data_row(payload: bytes) -> Row:
    (count,) = _INT16.unpack_from(payload)
    offset = _INT16.size
    row: Row = []
    for _ in range(count):
        (size,) = _INT32.unpack_from(payload, offset)
        offset += _INT32.size
        if size < 0:
            row.append(None)
        else:
            row.append(payload[offset : offset + size].decode())
            offset += size
    return row


def _error_text(payload: bytes) -> str:
    fields = {f[:1]: f[1:].decode(errors="replace") for f in payload.split(b"\0") if f}
    return f"{fields.get(b'S', 'ERROR')}: {fields.get(b'M', '?')} ({fields.get(b'C', '')})"
