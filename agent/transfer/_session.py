"""The fetch of a rank's files from one source, over a DEALER socket of its own: chunks asked
for ``pipeline`` at a time (the credit), each answer checked, written and hashed as it arrives
while the server reads and sends the next ones, and another request sent for it. Answers come
in the order asked (one connection, a server that answers in order), so one file is written
at a time: the requests run from file to file without a pause, small files included.

Everything that makes this source unusable ends the session with :class:`SourceFailed`: no
answer for ``timeout`` seconds, a handshake refused, a file it lacks or refuses, an answer
that is not the one expected, bytes that do not verify. The file being written is removed."""

from __future__ import annotations

import collections
import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import zmq
from zmq.utils.monitor import parse_monitor_message

from agent.transfer._protocol import MalformedFrame, decode_reply
from agent.transfer._store import CheckpointFolder, Incoming, Unverified, WantedFile
from crctl import keys
from crctl.v1 import transfer_pb2

_HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


class SourceFailed(Exception):
    """This source will not give the files: ``reason`` says why, for a person; ``damaged``
    when what it holds differs from the manifest (a file missing, of another size, bytes that
    do not verify), not when it could not be asked or refused."""

    def __init__(self, reason: str, *, damaged: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.damaged = damaged


@dataclass(frozen=True)
class ImageSource:
    """A host that holds a rank's images and the image server that serves them."""

    host: str
    endpoint: str  # "tcp://ADDRESS:PORT" of its image server
    server_key: bytes  # its CurveZMQ public key (z85), as crctl.keys.KeyPair.public


@dataclass(frozen=True)
class _Asked:
    tag: int
    file: WantedFile
    offset: int
    length: int

    @property
    def last(self) -> bool:
        return self.offset + self.length >= self.file.line.size


class Session:
    """One source's part of a fetch (``run`` once)."""

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        source: ImageSource,
        own: keys.KeyPair,
        store: CheckpointFolder,
        job: str,
        checkpoint: str,
        *,
        timeout: float,
        chunk_bytes: int,
        pipeline: int,
    ) -> None:
        self._context = context
        self._source = source
        self._own = own
        self._store = store
        self._job = job
        self._checkpoint = checkpoint
        self._timeout = timeout
        self._chunk_bytes = chunk_bytes
        self._pipeline = pipeline
        self._tags = itertools.count(1)

    def run(self, todo: list[WantedFile]) -> None:
        """Fetch every file of ``todo`` in order, removing each from it once in place."""
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        monitor = sock.get_monitor_socket(_HANDSHAKE_EVENTS)
        incoming: Incoming | None = None
        try:
            try:
                sock.setsockopt(zmq.MAXMSGSIZE, self._chunk_bytes + (64 << 10))  # chunk or reply
                sock.setsockopt(zmq.IPV6, 1)
                sock.curve_serverkey = self._source.server_key
                sock.curve_publickey = self._own.public
                sock.curve_secretkey = self._own.secret
                sock.connect(self._source.endpoint)
            except zmq.ZMQError as exc:  # a malformed endpoint or key
                raise SourceFailed(f"cannot connect to {self._source.endpoint}: {exc}") from None
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            poller.register(monitor, zmq.POLLIN)
            requests = self._requests(todo)
            asked: collections.deque[_Asked] = collections.deque()
            connected = False
            heard = time.monotonic()  # the last answer (or the start)
            while True:
                while len(asked) < self._pipeline and (chunk := next(requests, None)) is not None:
                    self._ask(sock, chunk)
                    asked.append(chunk)
                if not asked:
                    return
                wait = heard + self._timeout - time.monotonic()
                ready = dict(poller.poll(max(0, int(wait * 1000)) + 1))
                if monitor in ready:
                    connected = _handshake(monitor) or connected
                if sock not in ready:
                    if time.monotonic() - heard >= self._timeout:
                        silent = f"no answer in {self._timeout:g}s"
                        raise SourceFailed(silent if connected else f"unreachable ({silent})")
                    continue
                heard = time.monotonic()
                while asked:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    chunk = asked.popleft()
                    data = _bytes_of(frames, chunk)
                    if chunk.offset == 0:
                        incoming = Incoming(self._store, chunk.file, self._chunk_bytes)
                    assert incoming is not None and incoming.file is chunk.file
                    incoming.write(data)
                    if chunk.last:
                        try:
                            incoming.finish()
                        except Unverified as exc:
                            raise SourceFailed(exc.message, damaged=True) from None
                        incoming = None
                        todo.remove(chunk.file)
        finally:
            if incoming is not None:
                incoming.discard()
            sock.disable_monitor()
            monitor.close(0)
            sock.close(0)

    def _requests(self, todo: list[WantedFile]) -> Iterator[_Asked]:
        """Every chunk of every file, in order; one of no bytes for an empty file (it is asked
        for all the same: the source must have it)."""
        step = self._chunk_bytes
        for file in list(todo):
            size = file.line.size
            for offset in range(0, size, step) if size else [0]:
                yield _Asked(next(self._tags), file, offset, min(step, size - offset))

    def _ask(self, sock: zmq.Socket[bytes], chunk: _Asked) -> None:
        request = transfer_pb2.ChunkRequest(
            tag=chunk.tag,
            job=self._job,
            checkpoint=self._checkpoint,
            path=str(chunk.file.path),
            offset=chunk.offset,
            length=chunk.length,
        )
        sock.send(request.SerializeToString())


def _bytes_of(frames: list[zmq.Frame], chunk: _Asked) -> memoryview:
    """The chunk's bytes in its answer; raises :class:`SourceFailed` for an answer that is an
    error or not the one expected."""
    path = chunk.file.path
    expected = chunk.file.line.size
    if len(frames) != 2:
        raise SourceFailed(f"sent an answer of {len(frames)} frames, not 2")
    try:
        reply = decode_reply(frames[0].bytes)
    except MalformedFrame as exc:
        raise SourceFailed(f"sent a {exc.message}") from None
    if reply.tag != chunk.tag:
        raise SourceFailed(f"answered request {reply.tag}, expected {chunk.tag}")
    if reply.error == transfer_pb2.CHUNK_ERROR_NOT_FOUND:
        raise SourceFailed(f"no such file {path}", damaged=True)
    if reply.error == transfer_pb2.CHUNK_ERROR_REFUSED:
        raise SourceFailed(f"refused {path}: {reply.reason}")
    if reply.error != transfer_pb2.CHUNK_ERROR_UNSPECIFIED:
        raise SourceFailed(f"could not serve {path}: {reply.reason}")
    if reply.file_size != expected:
        raise SourceFailed(
            f"has {path} with {reply.file_size} bytes, the manifest says {expected}", damaged=True
        )
    data = frames[1].buffer
    if len(data) != chunk.length:
        raise SourceFailed(
            f"sent {len(data)} bytes of {path} at {chunk.offset}, {chunk.length} asked"
        )
    return data


def _handshake(monitor: zmq.Socket[bytes]) -> bool:
    """Reads the socket monitor's events: True once a handshake succeeded; raises
    :class:`SourceFailed` when the server refused our key or is not the one we expect."""
    connected = False
    while True:
        try:
            event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))
        except zmq.Again:
            return connected
        kind = event["event"]
        if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            connected = True
        elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            raise SourceFailed("refused this host's key (CurveZMQ authentication)")
        elif kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            raise SourceFailed(f"broke the CurveZMQ handshake (ZMTP error {event['value']:#x})")
        else:  # what a server whose key is another does: it cannot read our hello, and hangs up
            why = os.strerror(event["value"])
            raise SourceFailed(
                f"hung up in the CurveZMQ handshake ({why}): not the key this host was given?"
            )
