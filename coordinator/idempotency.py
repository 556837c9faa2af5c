"""Request ids (AIP-155): a mutating call that names a ``request_id`` happens at most once.

An id is scoped to the caller (uid) and the job: two users, or one user on two jobs, may pick
the same id without meeting. The first call's answer is recorded durably with a fingerprint of
the request (its method and a digest of every other field); a retry with the same id gets that
answer again (for an operation, the operation as it is now), even after a coordinator restart;
the same id with a different request is refused. A retry that arrives while the first call is
still under way waits for it. A call that fails records nothing: its retry runs afresh."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from google.protobuf.message import Message

from coordinator.store import RequestRecord, Store
from crctl.answers import Answers
from crctl.clock import Clock
from crctl.errors import ConfigError
from crctl.limits import MAX_REQUEST_ID

Reply = TypeVar("Reply", bound=Message)
Key = tuple[int, str, str]


def fingerprint(method: str, request: Message) -> str:
    """The method and a digest of the request without its request_id."""
    copy = type(request)()
    copy.CopyFrom(request)
    if "request_id" in copy.DESCRIPTOR.fields_by_name:
        copy.ClearField("request_id")
    digest = hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()
    return f"{method}:{digest}"


def check_request_id(request_id: str) -> None:
    if len(request_id) > MAX_REQUEST_ID or not request_id.isprintable():
        raise ConfigError(
            f"bad request id: use at most {MAX_REQUEST_ID} printable characters (a UUID is usual)"
        )


class RequestLedger:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._pending: Answers[Key, bytes] = Answers()  # calls under way
        self._pending_marks: dict[Key, str] = {}  # their requests' fingerprints

    async def once(
        self,
        *,
        caller_uid: int,
        job: str,
        request_id: str,
        method: str,
        request: Message,
        reply_type: type[Reply],
        call: Callable[[], Awaitable[Reply]],
    ) -> tuple[Reply, bool]:
        """``call()``'s answer, or the answer its first call with this id got: (reply,
        replayed)."""
        if not request_id:
            return await call(), False
        check_request_id(request_id)
        key = (caller_uid, job, request_id)
        mark = fingerprint(method, request)
        recorded = self._store.request(*key)
        if recorded is not None:
            _same_request(recorded.fingerprint, mark, request_id, job)
            return reply_type.FromString(recorded.response), True
        _same_request(self._pending_marks.setdefault(key, mark), mark, request_id, job)
        ran = False

        async def first_call() -> bytes:
            nonlocal ran
            ran = True
            answer = (await call()).SerializeToString()
            self._store.record_request(
                *key, RequestRecord(fingerprint=mark, response=answer, created_at=self._clock.now())
            )
            return answer

        try:
            answer = await self._pending.once(key, first_call)
        finally:
            if ran:  # recorded (or failed: its retry runs afresh); later retries read the record
                self._pending.forget(key)
                del self._pending_marks[key]
        return reply_type.FromString(answer), not ran


def _same_request(first: str, mark: str, request_id: str, job: str) -> None:
    """Refuse a request whose id its first call (``first``, a fingerprint) used for another."""
    if first != mark:
        method = first.split(":", 1)[0]
        raise ConfigError(
            f"request id {request_id!r} was already used for another request ({method} "
            f"of {job}); a retry must repeat the request exactly, a new request needs a "
            "new id",
            job=job,
        )
