"""The hub against a model (issue 5, point 8): whatever sequence of joins, leaves and
disconnects several connections make, concurrently or not, each published message reaches
exactly the connections with a joined pattern that matches it, once, and the broker holds
exactly one binding per pattern someone still has joined.

The model uses ``reference_matches`` (tests/unit/test_topics.py), AMQP topic matching written
straight from the definition; the hub runs on the in-process memory broker.
"""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from rabbitsocks.brokers.memory import MemoryBroker
from rabbitsocks.frames import SharedFrame
from rabbitsocks.pubsub.hub import Hub
from rabbitsocks.pubsub.protocol import encode_delivery
from tests.unit.test_topics import keys, patterns, reference_matches

SUBSCRIBERS = 3


class Sub:
    """A connection as the hub sees it: it records what it was sent."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.received: list[str] = []

    def send_shared(self, frame: SharedFrame) -> None:
        assert isinstance(frame.data, str)
        self.received.append(frame.data)


# (subscriber, operation, patterns): "join", "leave", or "drop" (disconnect: unregister).
operations = st.lists(
    st.tuples(
        st.integers(0, SUBSCRIBERS - 1),
        st.sampled_from(["join", "join", "leave", "drop"]),
        st.lists(patterns, min_size=1, max_size=3),
    ),
    max_size=25,
)


async def _run(steps: list[tuple[int, str, list[str]]], probes: list[str], together: bool) -> None:
    broker = MemoryBroker()
    hub = Hub(broker)
    await hub.start()
    subs = [Sub(i) for i in range(SUBSCRIBERS)]
    model: list[set[str]] = [set() for _ in subs]
    handles = [hub.register(sub, encode_delivery) for sub in subs]

    async def apply(index: int, operation: str, topics: list[str]) -> None:
        sub = handles[index]
        if operation == "join":
            result = await hub.join(sub, topics)
            assert result.done == topics
            assert not result.refused
            model[index].update(topics)
        elif operation == "leave":
            result = await hub.leave(sub, topics)
            assert sorted(result.done) == sorted(set(topics) & model[index])
            model[index].difference_update(topics)
        else:
            await hub.unregister(sub)
            # The same writer comes back as a new connection.
            handles[index] = hub.register(subs[index], encode_delivery)
            model[index].clear()

    if together:
        # One task per subscriber, interleaved at every await: binds and unbinds of shared
        # patterns race, as they do between connections of one process.
        per_sub: list[list[tuple[str, list[str]]]] = [[] for _ in subs]
        for index, operation, topics in steps:
            per_sub[index].append((operation, topics))

        async def run_one(index: int) -> None:
            for operation, topics in per_sub[index]:
                await apply(index, operation, topics)

        await asyncio.gather(*(run_one(i) for i in range(SUBSCRIBERS)))
    else:
        for step in steps:
            await apply(*step)

    joined = set().union(*model)
    assert hub.live_topics == len(joined)
    for index, handle in enumerate(handles):
        assert hub.topics_of(handle) == frozenset(model[index])
    for key in [*probes, *joined]:
        for sub in subs:
            sub.received.clear()
        await broker.publish(key, b"x")
        for index, sub in enumerate(subs):
            wanted = any(reference_matches(pattern, key) for pattern in model[index])
            assert len(sub.received) == (1 if wanted else 0), (key, model[index])
    for handle in handles:
        await hub.unregister(handle)
    assert hub.live_topics == 0
    await hub.close()


@given(operations, st.lists(keys, max_size=10), st.booleans())
@settings(max_examples=300, deadline=None)
def test_hub_delivers_what_the_model_says_once(
    steps: list[tuple[int, str, list[str]]], probes: list[str], together: bool
) -> None:
    asyncio.run(_run(steps, probes, together))
