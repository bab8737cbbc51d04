"""STOMP destinations and allow-lists (rabbitsocks.stomp.destinations), and the mapping of
headers to AMQP properties and back (rabbitsocks.stomp.messages)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

import pytest

from rabbitsocks.messages import Delivery
from rabbitsocks.stomp.destinations import (
    Destination,
    DestinationRules,
    format_destination,
    parse_destination,
)
from rabbitsocks.stomp.frames import FrameParser, StompError
from rabbitsocks.stomp.messages import FanoutEncoder, property_headers, send_properties


@pytest.mark.parametrize(
    ("text", "dest"),
    [
        ("/topic/news.*", Destination("topic", "news.*")),
        ("/topic/a%2Fb", Destination("topic", "a/b")),
        ("/exchange/amq.direct", Destination("exchange", "amq.direct")),
        ("/exchange/amq.direct/", Destination("exchange", "amq.direct", "")),
        ("/exchange/logs/a.#", Destination("exchange", "logs", "a.#")),
        ("/queue/jobs", Destination("queue", "jobs")),
        ("/amq/queue/existing", Destination("amqqueue", "existing")),
        ("/temp-queue/replies", Destination("temp-queue", "replies")),
        ("/reply-queue/amq.gen-a/b", Destination("reply-queue", "amq.gen-a/b")),
        ("bare", Destination("queue", "bare")),
    ],
)
def test_parse(text: str, dest: Destination) -> None:
    assert parse_destination(text) == dest


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("/nowhere/x", "Unknown destination"),
        ("topic/x", "Unknown destination"),
        ("", "Invalid destination"),
        ("/topic/", "Invalid destination"),
        ("/topic/a/b", "Invalid destination"),
        ("/queue", "Invalid destination"),
        ("/exchange/", "Invalid destination"),
        ("/exchange//x", "Invalid destination"),
        ("/exchange/a/b/c", "Invalid destination"),
        ("/reply-queue/", "Invalid destination"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(StompError) as caught:
        parse_destination(text)
    assert caught.value.message == message


def test_str_round_trips() -> None:
    for text in ("/topic/a%2Fb", "/exchange/x/k", "/exchange/x", "/queue/q", "/amq/queue/q"):
        assert str(parse_destination(text)) == text


@pytest.mark.parametrize(
    ("exchange", "key", "text"),
    [
        ("", "jobs", "/queue/jobs"),
        ("amq.topic", "a.b", "/topic/a.b"),
        ("amq.topic", "a/b%c", "/topic/a%2Fb%25c"),
        ("amq.topic", "caf\u00e9", "/topic/caf%C3%A9"),
        ("logs", "", "/exchange/logs"),
        ("logs", "k", "/exchange/logs/k"),
    ],
)
def test_format_destination(exchange: str, key: str, text: str) -> None:
    assert format_destination(exchange, key) == text


RULES = DestinationRules(
    ["/topic/news.#", "/topic/chat.*", "/queue/jobs.*", "/exchange/logs/#", "/amq/queue/fixed"]
)


@pytest.mark.parametrize(
    ("text", "allowed"),
    [
        ("/topic/news", True),
        ("/topic/news.a.b", True),
        ("/topic/news.#", True),
        ("/topic/chat.room", True),
        ("/topic/chat.*", True),
        ("/topic/chat.#", False),  # also matches chat.a.b, which chat.* does not
        ("/topic/chat.a.b", False),
        ("/topic/other", False),
        ("/queue/jobs.eu", True),
        ("/queue/jobs", False),
        ("/amq/queue/fixed", True),
        ("/amq/queue/jobs.eu", False),  # another kind
        ("/exchange/logs", True),  # no key: the empty key, covered by #
        ("/exchange/logs/x.y", True),
        ("/exchange/other/x", False),
        ("/temp-queue/x", False),
    ],
)
def test_rules(text: str, allowed: bool) -> None:
    assert RULES.allows(parse_destination(text)) is allowed


def test_rules_refuse_odd_names_unless_identical() -> None:
    rules = DestinationRules(["/queue/a.*"])
    assert not rules.allows(parse_destination("/queue/a*b"))
    assert DestinationRules(["/queue/#"]).allows(parse_destination("/queue/a*b"))


@pytest.mark.parametrize("pattern", ["/nowhere/x", "/exchange/logs", "/topic/a*", "/queue/"])
def test_invalid_rules(pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern.replace("*", r"\*")):
        DestinationRules([pattern])


def test_rules_from_claim_skip_invalid_ones() -> None:
    rules = DestinationRules.from_claim(["/topic/a.#", "garbage/x", 3])
    assert rules.patterns == ("/topic/a.#",)
    assert DestinationRules.from_claim("/topic/b").allows(parse_destination("/topic/b"))
    assert not DestinationRules.from_claim(None)


# --- headers and properties -----------------------------------------------------------------


@dataclass
class Props:
    content_type: str | None = None
    content_encoding: str | None = None
    headers: dict[str, Any] | None = None
    delivery_mode: int | None = None
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None
    message_id: str | None = None
    timestamp: datetime.datetime | None = None
    message_type: str | None = None
    user_id: str | None = None
    app_id: str | None = None


def test_send_headers_to_properties_and_back() -> None:
    headers = {
        "destination": "/topic/x",
        "receipt": "r1",
        "content-type": "application/json",
        "content-encoding": "gzip",
        "persistent": "true",
        "priority": "7",
        "correlation-id": "c1",
        "reply-to": "/queue/replies",
        "expiration": "60000",
        "amqp-message-id": "m1",
        "timestamp": "1700000000",
        "type": "order",
        "user-id": "guest",
        "app-id": "shop",
        "custom": "v:1",
    }
    props = send_properties(headers)
    assert props == {
        "content_type": "application/json",
        "content_encoding": "gzip",
        "delivery_mode": 2,
        "priority": 7,
        "correlation_id": "c1",
        "reply_to": "/queue/replies",
        "expiration": "60000",
        "message_id": "m1",
        "timestamp": datetime.datetime.fromtimestamp(1700000000, datetime.UTC),
        "message_type": "order",
        "user_id": "guest",
        "app_id": "shop",
        "headers": {"custom": "v:1"},
    }
    back = dict(property_headers(Props(**props)))
    assert back == {k: v for k, v in headers.items() if k not in ("destination", "receipt")}


def test_reply_to_that_is_no_destination_is_a_reply_queue() -> None:
    assert property_headers(Props(reply_to="amq.gen-xyz")) == [
        ("reply-to", "/reply-queue/amq.gen-xyz")
    ]


def test_amqp_headers_kept_as_rabbitmq_keeps_them() -> None:
    headers = {
        "s": "x",
        "i": 3,
        "b": b"raw",
        "t": True,
        "f": 1.5,
        "d": {"x": 1},
        "subscription": "no",
    }
    assert property_headers(Props(headers=headers)) == [("s", "x"), ("i", "3"), ("b", "raw")]


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("priority", "256"),
        ("priority", "x"),
        ("persistent", "yes"),
        ("expiration", "-1"),
        ("timestamp", "soon"),
        ("correlation-id", "x" * 256),
    ],
)
def test_invalid_send_headers(header: str, value: str) -> None:
    with pytest.raises(StompError, match=header):
        send_properties({header: value})


def test_fanout_encoder() -> None:
    encoder = FanoutEncoder("1.2", "sub-0", None, True, "amq.topic")
    delivery = Delivery("news.a", b"x\x00y", Props(content_type="text/plain"), "amq.topic")
    frame = encoder(delivery)
    assert frame is not None
    assert isinstance(frame.data, str)  # UTF-8: a text message
    parser = FrameParser(max_frame_size=1000, max_headers=20)
    parser.version = "1.2"
    (parsed,) = parser.feed(frame.data.encode())
    assert parsed.command == "MESSAGE"
    assert parsed.body == b"x\x00y"
    headers = parsed.headers
    assert headers["subscription"] == "sub-0"
    assert headers["destination"] == "/topic/news.a"
    assert headers["ack"] == headers["message-id"]
    assert headers["message-id"].startswith("T_sub-0@@fanout@@")
    assert headers["content-type"] == "text/plain"
    assert headers["content-length"] == "3"


def test_fanout_encoder_binary_body_and_exchange_destination() -> None:
    encoder = FanoutEncoder("1.1", "s", "logs", False, "amq.topic")
    frame = encoder(Delivery("k", b"\xff\xfe", None, "logs"))
    assert frame is not None
    assert isinstance(frame.data, bytes)
    assert b"destination:/exchange/logs/k\n" in frame.data
    assert b"\nack:" not in frame.data
