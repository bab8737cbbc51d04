"""Every internal of a third-party library that rabbitsocks touches, in one place.

Each entry names the library versions it was written for (pinned in pyproject.toml) and has
a contract test in tests/unit/test_compat.py that fails when an upgrade changes what it
relies on. Nothing outside this module may reach into another library's private state.

pamqp (4.0.x, under aiormq 7.2 / aio-pika 10.2)
-----------------------------------------------
``pamqp.decode.METHODS["shortstr"]``: the decoder pamqp looks up (through
``pamqp.decode.by_type``) for every ``shortstr`` field of every frame it reads. pamqp
decodes a shortstr as strict UTF-8, but AMQP 0-9-1 defines it as octets (section 4.2.5.3)
and RabbitMQ routes a message whose routing key is not UTF-8 like any other: one such
message from any producer raised inside aiormq's frame reader and closed our whole
connection (queue, bindings, messages in flight).

The table entry is replaced once, by ``install_lenient_shortstr``, with a decoder that is
lenient only *inside our own connections*: ``lenient_shortstr()`` sets a context variable
in the task that opens a connection, aiormq's reader task inherits that context when the
connection creates it (``asyncio.create_task`` copies the current context), and the
replacement decodes undecodable bytes as lone surrogates ("surrogateescape") there and
strictly everywhere else. So an aio-pika connection of the host application in the same
process (``rabbitsocks.mount``) keeps pamqp's behaviour.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import pamqp.decode

__all__ = ["install_lenient_shortstr", "lenient_shortstr", "strict_shortstr"]

_LENIENT: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "rabbitsocks_lenient_shortstr", default=False
)

#: pamqp's own decoder, kept to call it outside our connections.
strict_shortstr: Callable[[bytes], tuple[int, Any]] = pamqp.decode.METHODS["shortstr"]


def _shortstr(value: bytes) -> tuple[int, Any]:
    """pamqp's shortstr decoder; without its strict UTF-8 inside our own connections."""
    if not _LENIENT.get():
        return strict_shortstr(value)
    try:
        length = value[0]
    except IndexError:
        raise ValueError("Could not unpack short string value") from None
    return length + 1, value[1 : length + 1].decode("utf-8", "surrogateescape")


def install_lenient_shortstr() -> None:
    """Put the context-aware decoder in pamqp's table (idempotent)."""
    pamqp.decode.METHODS["shortstr"] = _shortstr


@contextlib.contextmanager
def lenient_shortstr() -> Iterator[None]:
    """Within this block, connections opened (and the tasks they create) decode shortstrs
    leniently. Open our AMQP connections inside it."""
    install_lenient_shortstr()
    token = _LENIENT.set(True)
    try:
        yield
    finally:
        _LENIENT.reset(token)
