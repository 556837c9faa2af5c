"""An answer computed once: the same order or request again (a retry, a duplicate on the wire)
awaits the first one's answer instead of doing the work a second time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Answers(Generic[K, T]):
    def __init__(self) -> None:
        self._answers: dict[K, asyncio.Future[T]] = {}

    async def once(self, key: K, compute: Callable[[], Awaitable[T]]) -> T:
        """``compute()``'s answer for ``key``; while it is known, the same answer (or error)."""
        known = self._answers.get(key)
        if known is not None:
            return await asyncio.shield(known)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._answers[key] = future
        try:
            answer = await compute()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a repeated order re-raises it, nobody else waits
            raise
        future.set_result(answer)
        return answer

    def forget(self, *keys: K) -> None:
        """The orders of ``keys`` are answered afresh from now on."""
        for key in keys:
            self._answers.pop(key, None)
