"""STOMP transactions held by a connection, queue.declare parameters from headers, and the
options of a STOMP listener as the configuration is resolved."""

from __future__ import annotations

import pytest

from rabbitsocks.config import parse_config
from rabbitsocks.errors import ConfigError
from rabbitsocks.plan import plan_config
from rabbitsocks.stomp.frames import Frame, StompError
from rabbitsocks.stomp.messages import queue_params
from rabbitsocks.stomp.transactions import MAX_TRANSACTION_FRAMES, MAX_TRANSACTIONS, Transactions


def test_frames_are_held_in_order_until_the_end() -> None:
    tx = Transactions()
    tx.begin("t")
    first = Frame("SEND", {"transaction": "t", "destination": "/topic/a"}, b"1")
    second = Frame("ACK", {"transaction": "t", "id": "x"})
    tx.hold("t", first)
    tx.hold("t", second)
    assert tx.end("t") == [first, second]
    assert "transaction" not in first.headers
    with pytest.raises(StompError, match="invalid transaction identifier"):
        tx.end("t")


def test_misuse() -> None:
    tx = Transactions()
    tx.begin("t")
    with pytest.raises(StompError, match="has already begun"):
        tx.begin("t")
    with pytest.raises(StompError, match="invalid transaction identifier"):
        tx.hold("nope", Frame("SEND"))
    with pytest.raises(StompError, match="invalid transaction identifier"):
        tx.end("nope")


def test_bounds() -> None:
    tx = Transactions()
    for i in range(MAX_TRANSACTIONS):
        tx.begin(str(i))
    with pytest.raises(StompError, match=f"may have {MAX_TRANSACTIONS} open"):
        tx.begin("one more")
    for _ in range(MAX_TRANSACTION_FRAMES):
        tx.hold("0", Frame("SEND"))
    with pytest.raises(StompError) as caught:
        tx.hold("0", Frame("SEND"))
    assert caught.value.message == "Transaction too large"


def test_queue_params_defaults_and_headers() -> None:
    assert queue_params({}, durable=True) == {
        "durable": True,
        "exclusive": False,
        "auto_delete": False,
        "arguments": {},
    }
    headers = {
        "persistent": "false",
        "auto-delete": "true",
        "x-max-length": " 10",
        "x-queue-type": "quorum",
        "x-unknown": "ignored",
    }
    assert queue_params(headers, durable=True) == {
        "durable": False,
        "exclusive": False,
        "auto_delete": True,
        "arguments": {"x-max-length": 10, "x-queue-type": "quorum"},
    }
    assert queue_params({"durable": "True"}, durable=False)["durable"] is True


@pytest.mark.parametrize(("name", "value"), [("durable", "yes"), ("x-message-ttl", "soon")])
def test_queue_params_refuse_bad_values(name: str, value: str) -> None:
    with pytest.raises(StompError, match=name):
        queue_params({name: value}, durable=True)


# --- options, as `rabbitsocks check` and `serve` resolve them ------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"broker": "nosuch"},
            "listeners[0].options.broker: expected one of the configured brokers (memory),"
            " got 'nosuch'",
        ),
        ({"prefetch": 0}, "listeners[0].options.prefetch: expected an integer >= 1, got 0"),
        ({"rate": 0}, "listeners[0].options.rate: expected a number > 0, got 0"),
        (
            {"heart_beat_send": -1},
            "listeners[0].options.heart_beat_send: expected an integer >= 0, got -1",
        ),
        (
            {"subscribe": ["/nowhere/x"]},
            "listeners[0].options.subscribe: '/nowhere/x': '/nowhere/x' is not a valid destination",
        ),
        (
            {"prefetch": 50, "max_prefetch": 10},
            "listeners[0].options.prefetch: expected at most max_prefetch",
        ),
        (
            {"send_auth": {"callable": "json:nosuch"}},
            "listeners[0].options.send_auth.callable: cannot load 'json:nosuch'",
        ),
    ],
)
def test_options_are_checked_when_the_configuration_is_resolved(
    options: dict[str, object], message: str
) -> None:
    raw = {
        "listeners": [
            {"interface": "127.0.0.1:0", "callback": "callbacks.stomp", "options": options}
        ]
    }
    with pytest.raises(ConfigError) as caught:
        plan_config(parse_config(raw, environ={}))
    assert message in str(caught.value)


def test_held_octets_are_bounded_and_given_back_at_the_end() -> None:
    tx = Transactions(max_bytes=1000)
    tx.begin("a")
    tx.begin("b")
    tx.hold("a", Frame("SEND", {"destination": "/topic/x", "transaction": "a"}, b"x" * 400))
    tx.hold("b", Frame("SEND", {"destination": "/topic/x", "transaction": "b"}, b"x" * 400))
    with pytest.raises(StompError, match="hold 1000 octets at most"):
        tx.hold("a", Frame("SEND", {"destination": "/topic/x"}, b"x" * 400))
    assert len(tx.end("b")) == 1  # an ABORT or a COMMIT gives its octets back
    tx.hold("a", Frame("SEND", {"destination": "/topic/x"}, b"x" * 400))
