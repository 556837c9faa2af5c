"""The image server: the files of this host's checkpoint store, chunk by chunk, to the hosts
allowed to ask, on a CurveZMQ ROUTER in a thread of its own with a ZeroMQ context of its own.

Each request names a file and a range; the answer is the bytes (read with ``os.pread``, sent
without a copy into the reply) or why not. Only regular files in a rank's folder
(``<store>/<job>/<checkpoint>/rank-<N>/...``) are served, opened one path part at a time
without following any symlink (see ``_paths``); everything else is refused with a reason and a
warning. Requests are answered one at a time in the order they came: a client that keeps
several outstanding hides the round trips, and each client's queue is bounded
(``MAX_QUEUED_REPLIES``), so one that asks beyond its credit loses answers, not our memory."""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable, Collection
from pathlib import Path

import structlog
import zmq
from zmq.auth.thread import ThreadAuthenticator

from agent.transfer._paths import (
    PathRefused,
    check_names,
    image_path,
    open_folder,
    open_regular,
    open_store,
)
from agent.transfer._protocol import (
    MAX_CHUNK_BYTES,
    MAX_QUEUED_REPLIES,
    MAX_REQUEST_BYTES,
    ZAP_DOMAIN,
    MalformedFrame,
    decode_request,
)
from crctl import keys
from crctl.errors import UnavailableError
from crctl.v1 import transfer_pb2

log = structlog.get_logger()

_BATCH = 64  # requests taken from the socket between two looks at the stop signal


class _AllowList:
    """ZAP credentials provider: admits the client keys ``allowed()`` lists at each handshake
    (the agent's list follows the coordinator's); logs every refusal."""

    def __init__(self, allowed: Callable[[], Collection[bytes]], endpoint: str) -> None:
        self._allowed = allowed
        self._endpoint = endpoint

    def callback(self, domain: str, key: bytes) -> bool:
        try:
            admitted = key in self._allowed()
        except Exception as exc:
            log.error(
                "image_client_refused",
                endpoint=self._endpoint,
                reason=f"the allow list could not be read: {exc}",
                client_key=key.decode(),
            )
            return False
        if not admitted:
            log.warning(
                "image_client_refused",
                endpoint=self._endpoint,
                reason="unknown CurveZMQ key",
                client_key=key.decode(),
            )
        return admitted


class ImageServer:
    """Serves the files of the checkpoint store at ``store_root`` to peers whose CurveZMQ
    public key (z85) ``allowed_client_keys()`` lists, on ``bind_address:port`` (port 0: any
    free one). ``start`` returns the endpoint bound; ``close`` stops it (idempotent)."""

    def __init__(
        self,
        store_root: Path,
        bind_address: str,
        port: int,
        keypair: keys.KeyPair,
        allowed_client_keys: Callable[[], Collection[bytes]],
        *,
        max_chunk_bytes: int = MAX_CHUNK_BYTES,
    ) -> None:
        self._root = store_root
        host = f"[{bind_address}]" if ":" in bind_address else bind_address
        self._bind = f"tcp://{host}:{port or '*'}"
        self._ipv6 = ":" in bind_address
        self._keypair = keypair
        self._allowed = allowed_client_keys
        self._max_chunk = max_chunk_bytes
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._auth: ThreadAuthenticator | None = None
        self._router: zmq.Socket[bytes] | None = None
        self._wake: zmq.Socket[bytes] | None = None  # close() -> the thread
        self._thread: threading.Thread | None = None
        self._closed = False
        self.endpoint = ""

    def start(self) -> str:
        """Bind and serve in a thread; returns the endpoint, ``tcp://ADDRESS:PORT``."""
        assert self._context is None and not self._closed, "an ImageServer starts once"
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._context = context
        self._auth = ThreadAuthenticator(context)
        self._auth.start()
        self._auth.configure_curve_callback(
            ZAP_DOMAIN, credentials_provider=_AllowList(self._allowed, self._bind)
        )
        router = context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a full or gone client raises, not blocks
        router.setsockopt(zmq.SNDHWM, MAX_QUEUED_REPLIES)
        router.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        router.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        router.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        router.setsockopt(zmq.IPV6, int(self._ipv6))
        router.curve_server = True
        router.curve_publickey = self._keypair.public
        router.curve_secretkey = self._keypair.secret
        router.setsockopt_string(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        self._router = router
        try:
            router.bind(self._bind)
        except zmq.ZMQError as exc:
            self.close()
            raise UnavailableError(f"cannot serve images on {self._bind}: {exc}") from None
        self.endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        wake_address = f"inproc://image-server-{id(self)}"
        woken = context.socket(zmq.PAIR)
        woken.bind(wake_address)
        self._wake = context.socket(zmq.PAIR)
        self._wake.connect(wake_address)
        self._thread = threading.Thread(
            target=self._serve, args=(router, woken), name="image-server", daemon=True
        )
        self._thread.start()
        log.info("image_server_listening", endpoint=self.endpoint, store=str(self._root))
        return self.endpoint

    def close(self) -> None:
        """Stop serving: the thread ends, sockets and context are closed. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None and self._wake is not None:
            with contextlib.suppress(zmq.Again):  # else the thread has ended already
                self._wake.send(b"", zmq.NOBLOCK)
            self._thread.join()
        elif self._router is not None:  # bound failed: the thread never took it
            self._router.close(0)
        if self._wake is not None:
            self._wake.close(0)
        if self._auth is not None:
            self._auth.stop()
        if self._context is not None:
            self._context.term()

    def __enter__(self) -> ImageServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- the server's thread ------------------------------------------------------------------

    def _serve(self, router: zmq.Socket[bytes], woken: zmq.Socket[bytes]) -> None:
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(woken, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if woken in ready:
                    return
                for _ in range(_BATCH):
                    try:
                        frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    try:
                        self._handle(router, frames)
                    except Exception:  # one request's bug must not stop the others' service
                        log.exception("image_request_failed", endpoint=self.endpoint)
        except Exception:
            log.exception("image_server_failed", endpoint=self.endpoint)
        finally:
            router.close(0)
            woken.close(0)

    def _handle(self, router: zmq.Socket[bytes], frames: list[zmq.Frame]) -> None:
        client = frames[0].bytes
        if len(frames) != 2:
            log.warning(
                "image_request_malformed",
                reason=f"{len(frames) - 1} frames, not one",
                client_key=frames[-1].get("User-Id"),
            )
            return
        try:
            request = decode_request(frames[1].bytes)
        except MalformedFrame as exc:
            reply = transfer_pb2.ChunkReply(
                error=transfer_pb2.CHUNK_ERROR_BAD_REQUEST, reason=exc.message
            )
            data = b""
        else:
            reply, data = self._read(request)
            if reply.error == transfer_pb2.CHUNK_ERROR_UNSPECIFIED:
                if request.offset + len(data) >= reply.file_size:
                    log.debug(
                        "image_served",
                        job=request.job,
                        checkpoint=request.checkpoint,
                        path=request.path,
                        bytes=reply.file_size,
                        client_key=frames[1].get("User-Id"),
                    )
            elif reply.error != transfer_pb2.CHUNK_ERROR_NOT_FOUND:
                log.warning(
                    "image_request_refused",
                    job=request.job[:200],
                    checkpoint=request.checkpoint[:200],
                    path=request.path[:200],
                    reason=reply.reason,
                    client_key=frames[1].get("User-Id"),
                )
        try:
            router.send_multipart(
                [client, reply.SerializeToString(), data], flags=zmq.NOBLOCK, copy=False
            )
        except zmq.Again:
            log.warning(
                "image_reply_dropped",
                reason=f"the client has {MAX_QUEUED_REPLIES} answers unread",
                client_key=frames[1].get("User-Id"),
            )
        except zmq.ZMQError as exc:
            if exc.errno != errno.EHOSTUNREACH:  # else: the client is gone
                raise

    def _read(self, request: transfer_pb2.ChunkRequest) -> tuple[transfer_pb2.ChunkReply, bytes]:
        """The answer to one request, and its bytes."""
        reply = transfer_pb2.ChunkReply(tag=request.tag)

        def fail(error: transfer_pb2.ChunkError, reason: str) -> None:
            reply.error = error
            reply.reason = reason

        try:
            check_names(request.job, request.checkpoint)
            path = image_path(request.path)
        except PathRefused as exc:
            fail(transfer_pb2.CHUNK_ERROR_REFUSED, exc.message)
            return reply, b""
        if request.length > self._max_chunk:
            reason = f"a chunk of {request.length} bytes asked, at most {self._max_chunk} served"
            fail(transfer_pb2.CHUNK_ERROR_BAD_REQUEST, reason)
            return reply, b""
        fd: int | None = None
        try:
            root = open_store(self._root, create=False)
            try:
                folder = open_folder(root, (request.job, request.checkpoint, *path.folders))
            finally:
                os.close(root)
            try:
                fd = open_regular(folder, path.name, str(path))
            finally:
                os.close(folder)
            if fd is None:
                raise FileNotFoundError(errno.ENOENT, "no such file")
            size = os.fstat(fd).st_size
            length = min(request.length, max(0, size - request.offset))
            data = os.pread(fd, length, request.offset) if length else b""
        except FileNotFoundError:
            fail(transfer_pb2.CHUNK_ERROR_NOT_FOUND, f"no such file {path}")
            return reply, b""
        except PathRefused as exc:
            fail(transfer_pb2.CHUNK_ERROR_REFUSED, exc.message)
            return reply, b""
        except OSError as exc:
            fail(transfer_pb2.CHUNK_ERROR_IO, f"cannot read {path}: {exc.strerror}")
            return reply, b""
        finally:
            if fd is not None:
                os.close(fd)
        reply.file_size = size
        return reply, data
