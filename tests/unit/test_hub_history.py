"""The hub with history logs, on the memory broker: positions, resumes and their seam,
every reason a resume is not recovered, one copy per message, and #gap."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rabbitsocks.brokers.memory import MemoryBroker
from rabbitsocks.config import HistoryConfig
from rabbitsocks.frames import SharedFrame
from rabbitsocks.pubsub.history import Position
from rabbitsocks.pubsub.hub import Hub, Subscription
from rabbitsocks.pubsub.protocol import encode_delivery
from rabbitsocks.topics import topic_matches


class Writer:
    """Collects what the hub sends, parsed, and the gaps it is told of."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.gaps: list[tuple[list[str], int, int]] = []

    def send_shared(self, frame: SharedFrame) -> None:
        self.frames.append(json.loads(frame.data))

    def on_gap(self, topics: list[str], start: int, end: int) -> None:
        self.gaps.append((topics, start, end))

    def take(self) -> list[dict[str, Any]]:
        frames, self.frames = self.frames, []
        return frames


async def started(*history: HistoryConfig) -> tuple[Hub, MemoryBroker]:
    broker = MemoryBroker("memory", history, epoch="E")
    hub = Hub(broker)
    await hub.start()
    return hub, broker


def subscriber(hub: Hub) -> tuple[Writer, Subscription]:
    writer = Writer()
    return writer, hub.register(writer, encode_delivery, writer.on_gap)


def replayed(result: Any) -> list[str]:
    return [json.loads(f.data)["payload"] for f in result.replay]


async def test_history_topics_carry_positions_and_others_do_not() -> None:
    hub, broker = await started(HistoryConfig("chat.#"))
    writer, sub = subscriber(hub)
    result = await hub.join(sub, ["chat.1", "news"])
    assert result.done == ["chat.1", "news"]
    assert hub.live_topics == 1  # only "news" is bound: logs are always delivered
    await broker.publish("chat.1", b"a")
    await broker.publish("chat.2", b"not joined")
    await broker.publish("news", b"b")
    await broker.publish("chat.1", b"c")
    assert writer.take() == [
        {"topic": "chat.1", "payload": "a", "offset": 0, "epoch": "E"},
        {"topic": "news", "payload": "b"},
        {"topic": "chat.1", "payload": "c", "offset": 2, "epoch": "E"},
    ]


async def test_resume_replays_what_was_missed_then_live() -> None:
    hub, broker = await started(HistoryConfig("chat.#"))
    writer, sub = subscriber(hub)
    await hub.join(sub, ["chat.1"])
    await broker.publish("chat.1", b"seen")
    await hub.unregister(sub)
    for body in (b"m1", b"m2"):
        await broker.publish("chat.1", body)
    await broker.publish("chat.2", b"other")
    writer, sub = subscriber(hub)
    result = await hub.join(sub, ["chat.1"], {"chat.1": Position(0, "E")})
    assert result.resumed == {"chat.1": None}
    assert replayed(result) == ["m1", "m2"]
    await broker.publish("chat.1", b"live")
    assert [f["offset"] for f in writer.take()] == [4]


async def test_topics_of_one_resume_share_one_replay_without_repeats() -> None:
    hub, broker = await started(HistoryConfig("chat.#"))
    for key in ("chat.1", "chat.2", "chat.1", "chat.3.x"):
        await broker.publish(key, key.encode())
    _writer, sub = subscriber(hub)
    result = await hub.join(
        sub, ["chat.1", "chat.*"], {"chat.1": Position(0, "E"), "chat.*": Position(1, "E")}
    )
    assert result.resumed == {"chat.1": None, "chat.*": None}
    # chat.1 from offset 0 (the chat.1 at 2), chat.* from 1 (the same one): once.
    assert [json.loads(f.data)["offset"] for f in result.replay] == [2]


@pytest.mark.parametrize(
    ("config", "setup", "since", "reason"),
    [
        (HistoryConfig("chat.#"), 3, Position(1, "other"), "epoch changed"),
        (HistoryConfig("chat.#", max_messages=2), 5, Position(1, "E"), "position left retention"),
        (HistoryConfig("chat.#"), 2, Position(5, "E"), "position is ahead of the log"),
        (
            HistoryConfig("chat.#", replay_limit=2),
            4,
            Position(0, "E"),
            "replay limit exceeded (max 2 messages)",
        ),
        (
            HistoryConfig("chat.#", replay_bytes=5),
            4,
            Position(0, "E"),
            "replay limit exceeded (max 5 bytes)",
        ),
    ],
)
async def test_not_recovered_replays_nothing_and_joins_live(
    config: HistoryConfig, setup: int, since: Position, reason: str
) -> None:
    hub, broker = await started(config)
    for i in range(setup):
        await broker.publish("chat.1", b"abc%d" % i)
    writer, sub = subscriber(hub)
    result = await hub.join(sub, ["chat.1"], {"chat.1": since})
    assert result.done == ["chat.1"]
    assert result.resumed == {"chat.1": reason}
    assert result.replay == []
    await broker.publish("chat.1", b"live")
    assert [f["payload"] for f in writer.take()] == ["live"]


async def test_exactly_the_limit_is_recovered() -> None:
    hub, broker = await started(HistoryConfig("chat.#", replay_limit=2, replay_bytes=2))
    await broker.publish("chat.1", b"0")
    await broker.publish("chat.1", b"1")
    await broker.publish("chat.1", b"2")
    _writer, sub = subscriber(hub)
    result = await hub.join(sub, ["chat.1"], {"chat.1": Position(0, "E")})
    assert result.resumed == {"chat.1": None}
    assert replayed(result) == ["1", "2"]


async def test_positions_of_topics_without_history_or_already_joined() -> None:
    hub, _broker = await started(HistoryConfig("chat.#"))
    _writer, sub = subscriber(hub)
    await hub.join(sub, ["chat.1"])
    result = await hub.join(
        sub,
        ["chat.1", "news", "chat.*"],
        {"chat.1": Position(0, "E"), "news": Position(0, "E"), "chat.*": Position(0, "E")},
    )
    assert result.done == ["chat.1", "news", "chat.*"]
    assert result.resumed == {
        "chat.1": "already joined",  # it has been receiving them
        "news": "topic has no history",
        "chat.*": "already joined",  # chat.1 messages reach it already: no repeat
    }


async def test_a_queue_pattern_overlapping_a_history_topic_delivers_once() -> None:
    hub, broker = await started(HistoryConfig("chat.#"))
    writer, sub = subscriber(hub)
    other_writer, other = subscriber(hub)
    await hub.join(sub, ["chat.1", "#"])
    await hub.join(other, ["#"])
    await broker.publish("chat.1", b"a")
    await broker.publish("news", b"b")
    assert writer.take() == [
        {"topic": "chat.1", "payload": "a", "offset": 0, "epoch": "E"},
        {"topic": "news", "payload": "b"},
    ]
    assert [f["payload"] for f in other_writer.take()] == ["a", "b"]
    await hub.leave(sub, ["chat.1"])  # only "#" now: the queue's copy again
    await broker.publish("chat.1", b"c")
    assert writer.take() == [{"topic": "chat.1", "payload": "c"}]


async def test_leave_and_unregister_stop_history_deliveries() -> None:
    hub, broker = await started(HistoryConfig("chat.#"))
    writer, sub = subscriber(hub)
    await hub.join(sub, ["chat.1", "chat.2"])
    result = await hub.leave(sub, ["chat.1", "nope"])
    assert result.done == ["chat.1"]
    assert result.refused == {"not joined": ["nope"]}
    await broker.publish("chat.1", b"a")
    await broker.publish("chat.2", b"b")
    assert [f["payload"] for f in writer.take()] == ["b"]
    await hub.unregister(sub)
    await broker.publish("chat.2", b"c")
    assert writer.take() == []
    assert hub.topics_of(sub) == frozenset()


async def test_gap_after_an_outage_names_topics_without_history() -> None:
    hub, _broker = await started(HistoryConfig("chat.#"))
    writer, sub = subscriber(hub)
    await hub.join(sub, ["chat.1", "news.*", "alerts"])
    hub._on_state(False)
    hub._on_state(True)
    ((topics, start, end),) = writer.gaps
    assert topics == ["alerts", "news.*"]
    assert 0 < start <= end


async def test_a_log_that_restarts_elsewhere_tells_its_subscribers() -> None:
    hub, _broker = await started(HistoryConfig("chat.#"))
    writer, sub = subscriber(hub)
    await hub.join(sub, ["chat.1", "news"])
    assert hub.history is not None
    hub.history.history_ready(0, "E", -1)  # continuous: nothing to say
    assert writer.gaps == []
    hub.history.history_ready(0, "F", 41)  # a new epoch
    ((topics, _, _),) = writer.gaps
    assert topics == ["chat.1"]


# --- the seam, as a property ----------------------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.sampled_from(["a.1", "a.2", "b", "a.1.x"])),
        st.tuples(st.just("drop"), st.integers(0, 2)),
        st.tuples(st.just("resume"), st.integers(0, 2)),
    ),
    max_size=40,
)
TOPICS = (["a.1"], ["a.*", "b"], ["a.#"])


@settings(max_examples=150, deadline=None)
@given(OPS, st.integers(1, 6))
async def test_every_client_gets_every_message_once_in_order(
    ops: list[tuple[str, Any]], keep: int
) -> None:
    """Clients drop and resume at random while messages are published: a client that is
    told ``recovered: true`` has every message of its topics since it first joined, once,
    in order (of each log); one told ``false`` has, from that point, every message after
    it."""
    hub, broker = await started(HistoryConfig("a.#", max_messages=keep), HistoryConfig("b"))
    published: list[tuple[str, int]] = []  # (key, offset in its log)
    offsets = {"a": 0, "b": 0}
    clients: list[dict[str, Any]] = []
    for topics in TOPICS:
        writer, sub = subscriber(hub)
        await hub.join(sub, topics)
        clients.append(
            {
                "topics": topics,
                "writer": writer,
                "sub": sub,
                "got": [],
                "since": len(published),
                "until": None,
            }
        )

    def check(client: dict[str, Any]) -> None:
        # In order within each log (two logs are two streams, with no order between them).
        for log in ("a", "b"):
            expected = [
                (key, offset)
                for key, offset in published[client["since"] : client["until"]]
                if key[0] == log and any(topic_matches(t, key) for t in client["topics"])
            ]
            got = [(f["topic"], f["offset"]) for f in client["got"] if f["topic"][0] == log]
            assert got == expected

    for op, arg in ops:
        if op == "publish":
            log = "b" if arg == "b" else "a"
            published.append((arg, offsets[log]))
            offsets[log] += 1
            await broker.publish(arg, arg.encode())
        else:
            client = clients[arg]
            client["got"] += client["writer"].take()
            if op == "drop" and client["sub"] is not None:
                await hub.unregister(client["sub"])
                client["sub"] = None
                client["until"] = len(published)
            elif op == "resume" and client["sub"] is None:
                last: dict[str, int] = {}
                for frame in client["got"]:
                    last[frame["epoch"] + ("b" if frame["topic"] == "b" else "a")] = frame["offset"]
                since = {}
                for topic in client["topics"]:
                    log = "b" if topic == "b" else "a"
                    if "E" + log in last:
                        since[topic] = Position(last["E" + log], "E")
                writer, sub = subscriber(hub)
                result = await hub.join(sub, client["topics"], since)
                client["writer"], client["sub"] = writer, sub
                client["until"] = None
                client["got"] += [json.loads(f.data) for f in result.replay]
                if any(r is not None for r in result.resumed.values()) or len(since) < len(
                    client["topics"]
                ):
                    # Not everything recovered (or nothing received yet to resume from):
                    # from here on, every message.
                    client["got"] = []
                    client["since"] = len(published)
    for client in clients:
        client["got"] += client["writer"].take()
        check(client)


async def test_join_gives_the_position_of_history_topics_not_recovered() -> None:
    hub, broker = await started(HistoryConfig("chat.#"))
    _writer, sub = subscriber(hub)
    result = await hub.join(sub, ["chat.1", "news"])
    assert result.positions == {"chat.1": (-1, "E")}  # nothing yet: before the first
    await broker.publish("chat.1", b"a")
    await broker.publish("chat.2", b"b")
    _writer, sub = subscriber(hub)
    result = await hub.join(
        sub,
        ["chat.1", "chat.2", "chat.3"],
        {"chat.1": Position(-1, "E"), "chat.2": Position(0, "old")},
    )
    assert result.resumed == {"chat.1": None, "chat.2": "epoch changed"}
    # chat.1 recovered: its replay says where it is; the others start where the log is.
    assert result.positions == {"chat.2": (1, "E"), "chat.3": (1, "E")}
    assert replayed(result) == ["a"]


async def test_resumes_take_turns_and_always_give_them_back() -> None:
    hub, broker = await started(HistoryConfig("chat.#"))
    assert hub.history is not None
    await broker.publish("chat.1", b"a")
    _writer, sub = subscriber(hub)
    await hub.join(sub, ["chat.1"], {"chat.1": Position(-1, "E")})
    assert not hub.history.turn.locked()
    # A resume whose connection goes while it waits for its turn gives it back too.
    await hub.history.turn.acquire()
    other, gone = subscriber(hub)
    join = asyncio.ensure_future(hub.join(gone, ["chat.1"], {"chat.1": Position(-1, "E")}))
    # One turn of the loop: the join runs up to the lock (it awaits nothing else here).
    await asyncio.sleep(0)
    await hub.unregister(gone)
    hub.history.turn.release()
    result = await join
    assert result.refused == {}
    assert not hub.history.turn.locked()
    await broker.publish("chat.1", b"b")
    assert other.take() == []  # unregistered: nothing reached it
