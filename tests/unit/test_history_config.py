"""brokers.<name>.history in the configuration: every mistake is one line naming its key,
and check says what it would keep."""

from __future__ import annotations

from typing import Any

import pytest

from rabbitsocks.cli import describe
from rabbitsocks.config import HistoryConfig, parse_config
from rabbitsocks.errors import ConfigError


def config(broker: dict[str, Any], name: str = "amqp") -> Any:
    return parse_config({"listeners": [{"interface": 0}], "brokers": {name: broker}})


def test_a_history_entry_and_its_defaults() -> None:
    parsed = config({"history": [{"topics": "chat.#", "max_age": 60}]})
    (history,) = parsed.brokers["amqp"].history
    assert history == HistoryConfig("chat.#", max_age=60.0)
    assert history.stream_name("amq.topic") == "rabbitsocks.history.amq.topic.chat.#"
    assert history.stream_segment_bytes == 64 * 1024 * 1024 // 8
    assert parsed.brokers["amqp"].history_replays == 16


@pytest.mark.parametrize(
    ("broker", "name", "message"),
    [
        ({"history": [{}]}, "amqp", "brokers.amqp.history[0].topics: missing required key"),
        (
            {"history": [{"topics": "chat*"}]},
            "amqp",
            "brokers.amqp.history[0].topics: expected a topic pattern, got 'chat*':"
            " '*' and '#' must be whole words",
        ),
        (
            {"history": [{"topics": "a", "max_age": 0}]},
            "amqp",
            "brokers.amqp.history[0].max_age: expected a number > 0, got 0",
        ),
        (
            {"history": [{"topics": "a", "max_bytes": 0}]},
            "amqp",
            "brokers.amqp.history[0].max_bytes: expected an integer >= 1, got 0",
        ),
        (
            {"history": [{"topics": "a", "replay_limit": -1}]},
            "amqp",
            "brokers.amqp.history[0].replay_limit: expected an integer >= 1, got -1",
        ),
        (
            {"history": [{"topics": "a", "resume_timeout": "soon"}]},
            "amqp",
            "brokers.amqp.history[0].resume_timeout: expected a number, got 'soon' (str)",
        ),
        (
            {"history": [{"topics": "a", "colour": 1}]},
            "amqp",
            "brokers.amqp.history[0].colour: unknown key",
        ),
        (
            {"history": [{"topics": "a"}, {"topics": "b"}, {"topics": "a"}]},
            "amqp",
            "brokers.amqp.history[2].topics: expected each pattern once, got 'a' again"
            " (also brokers.amqp.history[0])",
        ),
        (
            {"history": [{"topics": "a", "max_messages": 10}]},
            "amqp",
            "brokers.amqp.history[0].max_messages: RabbitMQ streams retain by age and bytes"
            " only (use max_age, max_bytes)",
        ),
        (
            {"history": [{"topics": "a", "stream": "amq.mine"}]},
            "amqp",
            "brokers.amqp.history[0].stream: expected a queue name of at most 255 bytes not"
            " starting with 'amq.', got 'amq.mine' (str)",
        ),
        (
            {"history": [{"topics": "a", "stream": "s"}, {"topics": "b", "stream": "s"}]},
            "amqp",
            "brokers.amqp.history: expected a distinct stream per pattern",
        ),
        (
            {"type": "memory", "history": [{"topics": "a", "cache_bytes": 5}]},
            "memory",
            "brokers.memory.history[0].cache_bytes: applies to RabbitMQ (type: amqp) only",
        ),
        (
            {"history_replays": 0},
            "amqp",
            "brokers.amqp.history_replays: expected an integer >= 1, got 0",
        ),
    ],
)
def test_mistakes_are_one_line_naming_the_key(
    broker: dict[str, Any], name: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        config(broker, name)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"<config>: {message}")


def test_a_long_default_stream_name_is_refused_with_the_key() -> None:
    long = "a" * 250
    with pytest.raises(ConfigError, match=r"brokers\.amqp\.history\[0\]\.stream: expected"):
        config({"history": [{"topics": long}]})
    # The memory broker has no stream: the same pattern is fine there.
    assert config({"type": "memory", "history": [{"topics": long}]}, "memory")


def test_check_says_what_it_would_keep() -> None:
    parsed = parse_config(
        {
            "listeners": [{"interface": 0}],
            "brokers": {
                "amqp": {"history": [{"topics": "chat.#", "stream": "chat-log"}]},
                "memory": {"type": "memory", "history": [{"topics": "room.*", "max_messages": 9}]},
            },
        }
    )
    lines = describe(parsed).splitlines()
    memory = lines.index("broker memory: in-process")
    assert lines[memory + 1] == (
        "  history room.*: in process, kept 600 s, 67108864 bytes, 9 messages;"
        " replays up to 1000 messages"
    )
    amqp = next(i for i, line in enumerate(lines) if line.startswith("broker amqp:"))
    assert lines[amqp + 1] == (
        "  history chat.#: stream chat-log, kept 600 s, 67108864 bytes; replays up to 1000 messages"
    )
