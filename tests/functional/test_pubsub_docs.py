"""docs/protocol.md checked: every wire example replayed on a real server over both
transports, every frame in it re-encoded by our encoders, its tables (#error reasons,
wildcards) run through the parser and the matcher, its YAML loaded; and
config/rabbitmq.yaml loaded."""

from __future__ import annotations

import ast
import json
import re
from base64 import b64decode
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from callbacks.pubsub import Options
from rabbitsocks import ProtocolError, Services, start_listener
from rabbitsocks.brokers.memory import MemoryBroker
from rabbitsocks.config import HistoryConfig, load_config, parse_config
from rabbitsocks.plan import plan_config
from rabbitsocks.pubsub.history import Position
from rabbitsocks.pubsub.protocol import (
    encode_error,
    encode_gap,
    encode_join_failed,
    encode_joined,
    encode_leave_failed,
    encode_left,
    encode_message,
    encode_message_at,
    encode_resumed,
    parse_command,
)
from rabbitsocks.topics import TopicTrie, topic_matches, validate_topic
from tests.support.pubsub import BAD_FRAMES, ROOT, TRANSPORTS, Clients, Transport, client_pool


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    async with client_pool() as pool:
        yield pool


DOC = ROOT / "docs" / "protocol.md"


@dataclass
class WireExample:
    """A ```text block of docs/protocol.md made of → / ← / publish lines."""

    line: int
    options: dict[str, Any] = field(default_factory=dict)
    replay: bool = True
    #: The broker's ``history`` configuration (``# history: [...]``), if any.
    history: list[dict[str, Any]] = field(default_factory=list)
    #: ("send", text), ("receive", text), ("publish", (routing key, body)) or
    #: ("reconnect", None).
    steps: list[tuple[str, Any]] = field(default_factory=list)


def _fenced_blocks(language: str) -> list[tuple[int, list[str]]]:
    blocks: list[tuple[int, list[str]]] = []
    lines = DOC.read_text(encoding="utf-8").splitlines()
    current: list[str] | None = None
    start = 0
    for number, line in enumerate(lines, 1):
        if current is None and line == f"```{language}":
            current, start = [], number
        elif current is not None and line == "```":
            blocks.append((start, current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def wire_examples() -> list[WireExample]:
    examples = []
    for start, lines in _fenced_blocks("text"):
        example = WireExample(start)
        for line in lines:
            if line.startswith("# listener options: "):
                example.options = json.loads(line.removeprefix("# listener options: "))
            elif line.startswith("# not replayed"):
                example.replay = False
            elif line.startswith("# history: "):
                example.history = json.loads(line.removeprefix("# history: "))
            elif line == "# reconnect":
                example.steps.append(("reconnect", None))
            elif line.startswith("→ "):
                example.steps.append(("send", line.removeprefix("→ ")))
            elif line.startswith("← "):
                example.steps.append(("receive", line.removeprefix("← ")))
            elif line.startswith("publish "):
                _, key, body = line.split(" ", 2)
                example.steps.append(("publish", (key, ast.literal_eval(body))))
            else:
                raise AssertionError(f"docs/protocol.md:{start}: unexpected line {line!r}")
        examples.append(example)
    return examples


WIRE_EXAMPLES = wire_examples()


def test_the_doc_has_wire_examples() -> None:
    assert len(WIRE_EXAMPLES) >= 10
    # The outage (checked below) and #gap (tests/integration/test_history_amqp.py).
    assert sum(not e.replay for e in WIRE_EXAMPLES) == 2
    assert sum(bool(e.history) for e in WIRE_EXAMPLES) >= 5


def _reencoded(text: str, body: bytes | None) -> str:
    """What our encoders write for the frame ``text`` describes."""
    frame = json.loads(text)
    topic, payload, reason = frame["topic"], frame["payload"], frame.get("reason")
    if topic == "@join":
        positions = {
            t: Position(p["offset"], p["epoch"]) for t, p in frame.get("positions", {}).items()
        }
        return encode_joined(payload, positions)
    if topic == "#join":
        return encode_join_failed(payload, reason)
    if topic == "@leave":
        return encode_left(payload)
    if topic == "#leave":
        return encode_leave_failed(payload, reason)
    if topic == "#error":
        return encode_error(payload)
    if topic == "@resume":
        return encode_resumed(payload, None if frame["recovered"] else reason)
    if topic == "#gap":
        return encode_gap(payload, frame["from"], frame["to"])
    assert body is not None, f"a message frame without a publish before it: {text}"
    if "offset" in frame:
        return encode_message_at(topic, body, frame["offset"], frame["epoch"])
    return encode_message(topic, body)


@pytest.mark.parametrize("example", WIRE_EXAMPLES, ids=lambda e: f"line{e.line}")
def test_doc_frames_are_what_the_encoders_write(example: WireExample) -> None:
    body: bytes | None = None
    for kind, value in example.steps:
        if kind == "publish":
            body = value[1]
        elif kind == "receive":
            frame = json.loads(value)
            if "offset" in frame:  # replayed: not the last message published
                payload = frame["payload"]
                replayed = payload.encode() if "encoding" not in frame else b64decode(payload)
                assert _reencoded(value, replayed) == value
            else:
                assert _reencoded(value, body) == value
        elif kind == "send":
            try:
                command = parse_command(value)
            except ProtocolError:
                continue  # answered #error: replayed below
            assert command.command in ("join", "leave")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "example", [e for e in WIRE_EXAMPLES if e.replay], ids=lambda e: f"line{e.line}"
)
async def test_doc_examples_replayed_on_a_real_server(
    example: WireExample, transport: Transport, clients: Clients
) -> None:
    # The examples name the broker "amqp": here a memory broker under that name, whose
    # history logs have the epoch the examples show.
    history = [HistoryConfig(**entry) for entry in example.history]
    services = Services(
        brokers={
            "memory": MemoryBroker("memory"),
            "amqp": MemoryBroker("amqp", history, epoch="k3j9"),
        },
        default_broker="amqp",
    )
    await services.start()
    listener = await start_listener(
        "127.0.0.1:0", "callbacks.pubsub", example.options, services=services
    )
    try:
        client = await clients.connect(transport, listener.port)
        for kind, value in example.steps:
            if kind == "send":
                await client.send_text(value)
            elif kind == "receive":
                assert await client.next_text() == value
            elif kind == "reconnect":
                await client.close()
                client = await clients.connect(transport, listener.port)
            else:
                await services.brokers["amqp"].publish(*value)
        # Nothing else arrived: the next frame answers this command.
        await client.send_text('{"command":"leave","topics":[]}')
        assert await client.next_text() == '{"topic":"@leave","payload":[]}'
    finally:
        await clients.close()
        await listener.stop()
        await services.close()


def _section(title: str) -> list[str]:
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = lines.index(title) + 1
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("#"))
    return lines[start:end]


def _table_rows(title: str) -> list[str]:
    rows = [line for line in _section(title) if line.startswith("| ")]
    return rows[2:]  # after the header and the |---| line


def _as_sent(frame: str | bytes | Any) -> Any:
    """A frame as a comparable value: bytes, a command object, or other text."""
    if isinstance(frame, str):
        try:
            value = json.loads(frame)
        except ValueError:
            return frame
        return value if isinstance(value, dict) else frame
    return frame


def test_doc_error_table_is_what_the_parser_answers() -> None:
    sent_to_a_server = [_as_sent(frame) for _, frame, _ in BAD_FRAMES]
    reasons = set()
    for row in _table_rows("### #error"):
        match = re.fullmatch(r"\| (.*) \| `([^`]*)` \|", row)
        assert match is not None, row
        cell, reason = match.groups()
        reasons.add(reason)
        spans = re.findall(r"`([^`]*)`", cell)
        frame: str | bytes
        if cell == "an empty frame":
            frame = ""
        elif cell.startswith("binary frame "):
            frame = ast.literal_eval(spans[0])
        elif "..." in cell:
            continue  # too long to write out; BAD_FRAMES has it
        else:
            (frame,) = spans
        with pytest.raises(ProtocolError) as info:
            parse_command(frame)
        assert str(info.value) == reason, row
        # ... and a real server answers it so: it is among BAD_FRAMES.
        assert _as_sent(frame) in sent_to_a_server, row

    # Every kind of reason a client can get is in the table (commands are quoted).
    def kind(reason: str) -> str:
        return re.sub(r"'.*'", "'NAME'", reason)

    assert {kind(r) for r in reasons} == {kind(reason) for _, _, reason in BAD_FRAMES}


def test_doc_wildcard_table_is_what_the_matcher_does() -> None:
    rows = _table_rows("## Topics and wildcards")
    assert len(rows) == 5
    for row in rows:
        pattern_cell, matching, other = row.strip().strip("|").split("|")
        pattern = re.findall(r"`([^`]*)`", pattern_cell)[0]
        trie: TopicTrie[str] = TopicTrie()
        trie.add(validate_topic(pattern, wildcards=True), pattern)
        for key in re.findall(r"`([^`]*)`", matching):
            assert topic_matches(pattern, key), (pattern, key)
            assert trie.match(key) == {pattern}, (pattern, key)
        for key in re.findall(r"`([^`]*)`", other):
            assert not topic_matches(pattern, key), (pattern, key)
            assert not trie.match(key), (pattern, key)


def test_doc_yaml_and_config_rabbitmq_yaml_are_valid() -> None:
    blocks = _fenced_blocks("yaml")
    assert blocks
    for start, lines in blocks:
        raw = yaml.safe_load("\n".join(lines))
        config = plan_config(parse_config(raw, source=f"line {start}", environ={})).config
        assert config.listeners[0].callback == "callbacks.pubsub"
    example = plan_config(load_config(ROOT / "config" / "rabbitmq.yaml", environ={})).config
    assert example.effective_default_broker == "amqp"
    assert example.brokers["amqp"].type == "amqp"
    assert example.brokers["amqp"].exchange == "amq.topic"
    assert example.listeners[0].options == Options(broker=None, wildcards=True, max_topics=100)
