"""What a log line may contain: passwords masked whatever their characters, query strings
hidden, control characters escaped in the text format."""

from __future__ import annotations

import logging
import sys

import pytest

from rabbitsocks.logs import TextFormatter, escape_controls, mask_url, redact_url, scrub


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"),
        ("amqps://u:pa/ss@rabbit:5671/vh", "amqps://u:***@rabbit:5671/vh"),
        ("amqp://u:p@ss@rabbit/", "amqp://u:***@rabbit/"),
        ("amqp://u:p#ss@rabbit/", "amqp://u:***@rabbit/"),
        ("amqp://u:p?ss@rabbit/?heartbeat=10", "amqp://u:***@rabbit/?heartbeat=10"),
        ("amqp://u:a:b/c?d#e@f@rabbit:5672/%2f", "amqp://u:***@rabbit:5672/%2f"),
        ("amqp://u:@rabbit/", "amqp://u:***@rabbit/"),
        ("amqp://[::1]:5672/", "amqp://[::1]:5672/"),
        ("amqp://guest@rabbit/", "amqp://guest@rabbit/"),
        ("amqp://rabbit/", "amqp://rabbit/"),
        ("not a url", "not a url"),
    ],
)
def test_mask_url_hides_the_whole_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("http://u:s3/cret@auth:8000/check?key=k3y", "http://u:***@auth:8000/check?***"),
        ("https://auth/check?key=k3y#frag", "https://auth/check?***"),
        ("https://auth/check#k3y", "https://auth/check?***"),
        ("https://auth/check", "https://auth/check"),
        ("http://u:p?q@auth/", "http://u:***@auth/"),
    ],
)
def test_redact_url_hides_the_query_too(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_scrub_free_text() -> None:
    text = (
        "InvalidURL: http://u:pa/ss@h:1/x?key=k3y line b'GET /websocket/?token=eyJ.x.y HTTP/1.1'"
        " (is it on the Python path?)"
    )
    assert scrub(text) == (
        "InvalidURL: http://u:***@h:1/x?*** line b'GET /websocket/?*** HTTP/1.1'"
        " (is it on the Python path?)"
    )


def test_escape_controls_keeps_a_line_a_line() -> None:
    assert escape_controls("a\rb\nc\x1b[31md\x00\x7f\x85\u2028\te") == (
        "a\\rb\\nc\\x1b[31md\\x00\\x7f\\x85\\u2028\\te"
    )
    assert escape_controls("plain é ü 中") == "plain é ü 中"


def record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("bad\n2026-01-01 00:00:00,000 INFO    forged: \x1b[2J")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("rabbitsocks.t", logging.INFO, __file__, 1, message, args, exc_info)


def test_text_format_is_one_line_per_message() -> None:
    line = TextFormatter().format(
        record("open %s path=/%s", "c1", "a\r\n2026-01-01 00:00:00,000 INFO forged\x1b[2J")
    )
    assert "\n" not in line
    assert "\r" not in line
    assert "\x1b" not in line
    assert line.endswith("open c1 path=/a\\r\\n2026-01-01 00:00:00,000 INFO forged\\x1b[2J")


def test_a_traceback_is_indented_under_its_record() -> None:
    text = TextFormatter().format(record("failed", exc=True))
    first, *rest = text.split("\n")
    assert first.endswith("INFO    rabbitsocks.t: failed")
    assert rest[0] == "  Traceback (most recent call last):"
    assert all(line.startswith("  ") for line in rest)
    assert "\x1b" not in text
    assert "  2026-01-01 00:00:00,000 INFO    forged: \\x1b[2J" in rest
