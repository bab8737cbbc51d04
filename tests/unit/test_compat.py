"""Contract tests for every third-party internal that rabbitsocks.compat touches: each fails
when an upgrade changes what compat relies on (then revisit compat, and its pins)."""

from __future__ import annotations

import asyncio

import pamqp.commands
import pamqp.decode
import pamqp.frame
import pytest

from rabbitsocks import compat


def deliver_frame(routing_key: bytes) -> bytes:
    """A Basic.Deliver method frame on channel 1, marshalled by hand around the key."""
    args = (
        bytes([3])
        + b"ctg"  # consumer_tag: shortstr
        + (1).to_bytes(8, "big")  # delivery_tag: longlong
        + b"\x00"  # redelivered: bit
        + bytes([9])
        + b"amq.topic"  # exchange: shortstr
        + bytes([len(routing_key)])
        + routing_key  # routing_key: shortstr
    )
    payload = (60).to_bytes(2, "big") + (60).to_bytes(2, "big") + args  # class 60, method 60
    return b"\x01" + (1).to_bytes(2, "big") + len(payload).to_bytes(4, "big") + payload + b"\xce"


def test_pamqp_decodes_shortstr_through_the_table() -> None:
    # compat replaces METHODS["shortstr"]: pamqp must still look decoders up there.
    assert "shortstr" in pamqp.decode.METHODS
    seen: list[bytes] = []
    original = pamqp.decode.METHODS["shortstr"]

    def spy(value: bytes) -> tuple[int, object]:
        seen.append(value)
        return original(value)

    pamqp.decode.METHODS["shortstr"] = spy
    try:
        _, _, frame = pamqp.frame.unmarshal(deliver_frame(b"a.b"))
    finally:
        pamqp.decode.METHODS["shortstr"] = original
    assert isinstance(frame, pamqp.commands.Basic.Deliver)
    assert frame.routing_key == "a.b"
    assert seen, "pamqp no longer decodes shortstrs through decode.METHODS"


def test_pamqp_itself_is_strict_about_utf8() -> None:
    # If pamqp ever decodes octets leniently by itself, compat can go.
    with pytest.raises(Exception, match=r"(?i)utf-8|decode|unpack"):
        compat.strict_shortstr(bytes([2]) + b"\xff\xfe")


def test_lenient_only_inside_our_context() -> None:
    compat.install_lenient_shortstr()
    frame = deliver_frame(b"a.\xff")
    with pytest.raises(Exception):  # noqa: B017 - whatever pamqp raises, it raises
        pamqp.frame.unmarshal(frame)
    with compat.lenient_shortstr():
        _, _, decoded = pamqp.frame.unmarshal(frame)
    assert isinstance(decoded, pamqp.commands.Basic.Deliver)
    assert decoded.routing_key == "a.\udcff"
    with pytest.raises(Exception):  # noqa: B017
        pamqp.frame.unmarshal(frame)


async def test_tasks_created_inside_inherit_the_leniency() -> None:
    # aiormq's reader task is created while our connection opens: it copies our context.
    async def reader() -> bool:
        return compat._LENIENT.get()

    with compat.lenient_shortstr():
        inside = asyncio.create_task(reader())
    outside = asyncio.create_task(reader())
    assert await inside is True
    assert await outside is False
    assert compat._LENIENT.get() is False
