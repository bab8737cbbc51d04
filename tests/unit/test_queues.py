"""SmallQueue: asyncio.Queue's behaviour for python-engineio, without its 3 KiB."""

from __future__ import annotations

import asyncio
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rabbitsocks.transports.queues import SmallQueue


async def test_fifo_order_and_sizes() -> None:
    q = SmallQueue()
    assert q.empty()
    assert q.qsize() == 0
    assert not q.full()
    for i in range(5):
        await q.put(i)
    assert q.qsize() == 5
    assert not q.empty()
    assert [q.get_nowait() for _ in range(3)] == [0, 1, 2]
    assert [await q.get(), await q.get()] == [3, 4]
    assert q.empty()
    with pytest.raises(asyncio.QueueEmpty):
        q.get_nowait()


async def test_get_waits_for_a_put() -> None:
    q = SmallQueue()
    getter = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)  # let it start waiting
    assert not getter.done()
    q.put_nowait("x")
    assert await asyncio.wait_for(getter, 1) == "x"


async def test_getters_are_served_in_order() -> None:
    q = SmallQueue()
    first = asyncio.ensure_future(q.get())
    second = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    q.put_nowait(1)
    q.put_nowait(2)
    assert await asyncio.wait_for(asyncio.gather(first, second), 1) == [1, 2]


async def test_a_cancelled_getter_passes_its_item_on() -> None:
    # python-engineio gets through asyncio.wait_for, which cancels on timeout: an item
    # that woke a getter cancelled in the same turn must reach the next getter.
    q = SmallQueue()
    first = asyncio.ensure_future(q.get())
    second = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    q.put_nowait("only")
    first.cancel()
    assert await asyncio.wait_for(second, 1) == "only"
    assert first.cancelled()


async def test_wait_for_timeout_leaves_no_getter_behind() -> None:
    q = SmallQueue()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(q.get(), 0.01)
    q.put_nowait("later")
    assert q.get_nowait() == "later"


async def test_join_waits_for_task_done() -> None:
    q = SmallQueue()
    await q.join()  # nothing unfinished: returns at once
    q.put_nowait("a")
    q.put_nowait("b")
    joined = asyncio.ensure_future(q.join())
    q.get_nowait()
    q.task_done()
    await asyncio.sleep(0)
    assert not joined.done()
    q.get_nowait()
    q.task_done()
    await asyncio.wait_for(joined, 1)
    with pytest.raises(ValueError):
        q.task_done()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 9), st.just("get"), st.just("done")), max_size=40))
def test_same_answers_as_asyncio_queue(ops: list[Any]) -> None:
    async def run(q: Any) -> list[Any]:
        seen: list[Any] = []
        for op in ops:
            try:
                if op == "get":
                    seen.append(q.get_nowait())
                elif op == "done":
                    q.task_done()
                    seen.append("done")
                else:
                    q.put_nowait(op)
            except (asyncio.QueueEmpty, ValueError) as exc:
                seen.append(type(exc).__name__)
            seen.append((q.qsize(), q.empty()))
        return seen

    async def both() -> tuple[list[Any], list[Any]]:
        return await run(asyncio.Queue()), await run(SmallQueue())

    ours, reference = asyncio.run(both())
    assert ours == reference


def test_an_idle_queue_is_a_fraction_of_an_asyncio_queue() -> None:
    def allocated(make: Any) -> int:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            kept = [make() for _ in range(1000)]
            size: int = tracemalloc.get_traced_memory()[0] - before
            del kept
            return size
        finally:
            tracemalloc.stop()

    async def measure() -> tuple[int, int]:
        q = SmallQueue()  # and one that was used: its containers are released again
        q.put_nowait(1)
        q.get_nowait()
        assert q._items is None
        return allocated(asyncio.Queue), allocated(SmallQueue)

    reference, ours = asyncio.run(measure())
    assert ours * 10 < reference
