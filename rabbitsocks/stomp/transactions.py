"""STOMP transactions (BEGIN, COMMIT, ABORT) as RabbitMQ's STOMP plugin does them: the SEND,
ACK and NACK frames of a transaction are held by the connection, in order, and done on
COMMIT or dropped on ABORT. Pure: the session does the frames."""

from __future__ import annotations

from rabbitsocks.stomp.frames import Frame, StompError

__all__ = ["MAX_TRANSACTIONS", "MAX_TRANSACTION_FRAMES", "Transactions"]

#: Open transactions per connection, and frames held by one.
MAX_TRANSACTIONS = 16
MAX_TRANSACTION_FRAMES = 1000


class Transactions:
    """One connection's open transactions."""

    __slots__ = ("_open",)

    def __init__(self) -> None:
        self._open: dict[str, list[Frame]] = {}

    def begin(self, name: str) -> None:
        if name in self._open:
            raise StompError("Bad transaction", f"transaction {name!r} has already begun")
        if len(self._open) >= MAX_TRANSACTIONS:
            raise StompError(
                "Too many transactions", f"a connection may have {MAX_TRANSACTIONS} open"
            )
        self._open[name] = []

    def hold(self, name: str, frame: Frame) -> None:
        """Keep ``frame`` (its ``transaction`` header removed) for the COMMIT of ``name``."""
        frames = self._open.get(name)
        if frames is None:
            raise StompError("Bad transaction", f"invalid transaction identifier: {name!r}")
        if len(frames) >= MAX_TRANSACTION_FRAMES:
            raise StompError(
                "Transaction too large",
                f"a transaction holds {MAX_TRANSACTION_FRAMES} frames at most",
            )
        frame.headers.pop("transaction", None)
        frames.append(frame)

    def end(self, name: str) -> list[Frame]:
        """Close ``name`` (COMMIT or ABORT): the frames it held, in order."""
        frames = self._open.pop(name, None)
        if frames is None:
            raise StompError("Bad transaction", f"invalid transaction identifier: {name!r}")
        return frames
