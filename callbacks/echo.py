"""Echo: every frame goes back unchanged (text stays text, binary stays binary).

The smallest complete callback module, and a model for your own: five plain functions.
"""

from __future__ import annotations

from dataclasses import dataclass

from rabbitsocks import Writer


@dataclass(frozen=True, slots=True)
class Options:
    """Echo takes no options: an empty ``Options`` makes any ``options`` key a
    configuration error instead of a setting silently ignored."""


def subprotocol_name() -> str:
    return "echo"


def init(path: str, options: Options) -> None:
    return None


def open(writer: Writer, state: None) -> Writer:
    return writer


def handle_frame(frame: str | bytes, writer: Writer) -> Writer:
    writer.send(frame)
    return writer


def terminate(state: Writer | None) -> None:
    return None
