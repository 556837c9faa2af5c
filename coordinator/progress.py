"""A feed of progress events that any number of API callers can follow, from the start, while
a long operation (a checkpoint, a restart) runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

Event = TypeVar("Event")


class ProgressFeed(Generic[Event]):
    def __init__(self, is_last: Callable[[Event], bool]) -> None:
        self._history: list[Event] = []
        self._changed = asyncio.Condition()
        self._is_last = is_last

    async def publish(self, event: Event) -> None:
        async with self._changed:
            self._history.append(event)
            self._changed.notify_all()

    async def follow(self) -> AsyncIterator[Event]:
        """Every event so far, then each new one, until the last."""
        seen = 0
        while True:
            async with self._changed:
                while len(self._history) <= seen:
                    await self._changed.wait()
                new = self._history[seen:]
            seen += len(new)
            for event in new:
                yield event
                if self._is_last(event):
                    return
