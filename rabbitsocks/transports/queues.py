"""A small stand-in for ``asyncio.Queue``, for python-engineio's per-session queue.

python-engineio gives every Engine.IO session an ``asyncio.Queue`` for its outbound
packets. An ``asyncio.Queue`` holds four ``collections.deque`` objects (items, getters,
putters, and the ``Event`` behind ``join``), and an empty deque takes some 700 bytes: about
3 KiB per connection, nearly all of it for a queue that is empty most of its life (our
fan-out writes straight to an idle socket, see ``transports.socketio``).

``SmallQueue`` behaves like an unbounded ``asyncio.Queue`` for what python-engineio uses
(``put``, ``put_nowait``, ``get``, ``get_nowait``, ``task_done``, ``join``, ``qsize``,
``empty``) and allocates its containers only while something is queued or waiting.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

__all__ = ["SmallQueue"]


class SmallQueue:
    """An unbounded FIFO queue for coroutines, with ``asyncio.Queue``'s semantics."""

    __slots__ = ("_finished", "_getters", "_items", "_unfinished")

    def __init__(self) -> None:
        self._items: collections.deque[Any] | None = None
        self._getters: list[asyncio.Future[None]] | None = None
        self._finished: list[asyncio.Future[None]] | None = None
        self._unfinished = 0

    def qsize(self) -> int:
        items = self._items
        return len(items) if items else 0

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return False

    def put_nowait(self, item: Any) -> None:
        items = self._items
        if items is None:
            items = self._items = collections.deque()
        items.append(item)
        self._unfinished += 1
        self._wake_getter()

    async def put(self, item: Any) -> None:
        self.put_nowait(item)

    def get_nowait(self) -> Any:
        items = self._items
        if not items:
            raise asyncio.QueueEmpty
        item = items.popleft()
        if not items:
            self._items = None
        return item

    async def get(self) -> Any:
        while not self._items:
            getter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()  # in case it was not done yet
                getters = self._getters
                if getters is not None and getter in getters:
                    getters.remove(getter)
                    if not getters:
                        self._getters = None
                if self._items and not getter.cancelled():
                    # It was woken for an item, then cancelled: pass the item on.
                    self._wake_getter()
                raise
        return self.get_nowait()

    def task_done(self) -> None:
        if self._unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished -= 1
        if self._unfinished == 0 and self._finished is not None:
            finished, self._finished = self._finished, None
            for waiter in finished:
                if not waiter.done():
                    waiter.set_result(None)

    async def join(self) -> None:
        if self._unfinished:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if self._finished is None:
                self._finished = []
            self._finished.append(waiter)
            await waiter

    def _wake_getter(self) -> None:
        getters = self._getters
        while getters:
            getter = getters.pop(0)
            if not getters:
                self._getters = getters = None
            if not getter.done():
                getter.set_result(None)
                return
