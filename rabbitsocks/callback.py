"""The callback-module contract, and loading a callback module by import string.

A callback module decides what a connection does. It is any object (a module of functions
or a class instance) with these five attributes, each of which may be sync or async:

``subprotocol_name() -> str | Sequence[str] | None``
    The WebSocket subprotocol this callback speaks (RFC 6455 section 1.9), or several, best
    first (``["v12.stomp", "v11.stomp", "v10.stomp"]``), or ``None``. The server picks the
    first of them that the client offers; a client that offers subprotocols but none of
    these is refused (400); one that offers none is accepted without. The choice is in
    ``current_connection().subprotocol``.
``init(path, options) -> state``
    Called before the handshake completes. Raising refuses the connection
    (``ConnectionRefused`` chooses the HTTP status; any other exception gives 403).
``open(writer, state) -> state``
    Called once the connection is open. ``writer`` can ``send`` frames and ``close``.
``handle_frame(frame, state) -> state``
    Called for every frame, in order: ``str`` for text, ``bytes`` for binary.
``terminate(state) -> None``
    Called exactly once after a successful ``init``, whoever closed the connection.

A module may also define:

``Options``
    A dataclass type. The listener's ``options`` mapping is validated against it when the
    configuration is loaded, and ``init`` receives the dataclass instance.
``setup(context) -> callback``
    Called once per listener at start-up, sync or async, with a ``ListenerContext`` (the
    listener's options and the process's shared services, such as the pub/sub hubs). What it
    returns is used as the listener's callback, so a callback can hold per-listener state
    without module globals.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

from rabbitsocks.errors import CallbackLoadError, ConnectionRefused
from rabbitsocks.frames import SharedFrame

if TYPE_CHECKING:
    from rabbitsocks.services import Services

__all__ = [
    "REQUIRED_FUNCTIONS",
    "Callback",
    "CallbackRunner",
    "ListenerContext",
    "Writer",
    "import_callback",
]

#: The five procedures every callback module has.
REQUIRED_FUNCTIONS = ("subprotocol_name", "init", "open", "handle_frame", "terminate")


@runtime_checkable
class Writer(Protocol):
    """What a callback can do to its connection, whatever the transport."""

    def send(self, frame: str | bytes) -> None:
        """Queue ``frame`` for the peer: ``str`` as a text frame, ``bytes`` as binary.

        Never blocks. A peer that does not read fast enough is disconnected as a slow
        consumer rather than let the queue grow without bound.
        """
        ...

    def send_shared(self, frame: SharedFrame) -> None:
        """Queue a frame that goes to many connections (fan-out).

        Make one ``SharedFrame`` per message and hand it to every recipient's writer: each
        transport encodes it once (its WebSocket framing, its Socket.IO packet) and writes
        the same bytes to every socket, instead of encoding once per recipient. Otherwise
        like ``send``.
        """
        ...

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection with ``code`` and ``reason`` (RFC 6455 section 7.4)."""
        ...


@runtime_checkable
class Callback(Protocol):
    """The five procedures of a callback module. Each may also be a coroutine function."""

    def subprotocol_name(self) -> str | Sequence[str] | None: ...

    def init(self, path: str, options: Any) -> Any: ...

    def open(self, writer: Writer, state: Any) -> Any: ...

    def handle_frame(self, frame: str | bytes, state: Any) -> Any: ...

    def terminate(self, state: Any) -> Any: ...


class ConnectCheck(Protocol):
    """A listener's connect authorization (``auth.ConnectAuthorizer``), as a callback that
    authorizes in its own protocol sees it."""

    #: Set by the callback's ``setup``: the handshake no longer decides, ``check`` does.
    deferred: bool

    async def check(self, request: Any, token: str | None = None) -> dict[str, Any] | None:
        """The verified claims (``None`` without a token); ``AuthDenied`` to refuse."""
        ...


@dataclass(frozen=True, slots=True)
class ListenerContext:
    """What a callback's optional ``setup`` receives, once per listener."""

    #: The listener's name (its interface as written in the configuration).
    name: str
    #: The listener's options: a mapping, or an instance of the callback's ``Options``.
    options: Any
    #: Process-wide services shared by every listener (pub/sub hubs, brokers).
    services: Services
    #: The listener's connect authorization (``auth``), if it has one. A callback whose
    #: protocol presents credentials after the handshake sets its ``deferred`` and calls
    #: its ``check`` itself (see ``callbacks.stomp``).
    authorizer: ConnectCheck | None = None


def _adapt(fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """Return a coroutine function calling ``fn``, sync or async, without extra tasks."""
    if inspect.iscoroutinefunction(fn):
        return cast(Callable[..., Awaitable[Any]], fn)

    async def call(*args: Any) -> Any:
        result = fn(*args)
        # A sync function may still return an awaitable (a lambda around a coroutine).
        if inspect.isawaitable(result):
            return await result
        return result

    return call


class CallbackRunner:
    """A loaded callback with its five procedures normalised to coroutine functions.

    ``subprotocols`` is read once, at start-up: it cannot change per connection.
    """

    __slots__ = ("handle_frame", "init", "name", "open", "subprotocols", "target", "terminate")

    def __init__(self, name: str, target: Any, subprotocols: Sequence[str] = ()) -> None:
        self.name = name
        self.target = target
        self.subprotocols = tuple(subprotocols)
        self.init = _adapt(target.init)
        self.open = _adapt(target.open)
        self.handle_frame = _adapt(target.handle_frame)
        self.terminate = _adapt(target.terminate)

    @property
    def subprotocol(self) -> str | None:
        """The preferred subprotocol, if any."""
        return self.subprotocols[0] if self.subprotocols else None

    def choose_subprotocol(self, offered: Sequence[str]) -> str | None:
        """The subprotocol to answer a client that offered ``offered`` (RFC 6455 section
        4.2.2: the server picks one of them, or none): ours in our order of preference.

        ``None`` when the client offered none. Raises ``ConnectionRefused`` (400) when it
        offered some but none of ours: answering without one would let a client that needs
        its subprotocol speak it to a server that does not.
        """
        if not offered:
            return None
        for name in self.subprotocols:
            if name in offered:
                return name
        expected = ", ".join(f"'{name}'" for name in self.subprotocols) or "none"
        raise ConnectionRefused(
            f"unsupported subprotocol: offered {', '.join(offered)}; this endpoint speaks "
            f"{expected}",
            status=400,
        )

    @classmethod
    async def create(cls, name: str, target: Any) -> CallbackRunner:
        check_callback(name, target)
        declared = await _adapt(target.subprotocol_name)()
        if declared is None:
            return cls(name, target)
        if isinstance(declared, str):
            return cls(name, target, (declared,))
        if (
            isinstance(declared, Sequence)
            and declared
            and all(isinstance(item, str) and item for item in declared)
        ):
            return cls(name, target, tuple(declared))
        raise CallbackLoadError(
            f"{name}.subprotocol_name() returned {declared!r}; expected a str, a non-empty"
            " list of str, or None"
        )


def import_callback(spec: str) -> object:
    """Import a callback module from ``"package.module"`` or ``"package.module:attr"``.

    Raises ``CallbackLoadError`` with one sentence when the module cannot be imported, the
    attribute does not exist, or a required function is missing.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or (":" in spec and not attr):
        raise CallbackLoadError(f'{spec!r} is not an import string like "package.module"')
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise CallbackLoadError(
                f"cannot import {module_name!r}: no module named {exc.name!r}"
                " (is it on the Python path?)"
            ) from exc
        raise CallbackLoadError(f"cannot import {module_name!r}: {exc}") from exc
    except Exception as exc:
        raise CallbackLoadError(
            f"cannot import {module_name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    target: object = module
    if attr:
        for part in attr.split("."):
            try:
                target = getattr(target, part)
            except AttributeError:
                raise CallbackLoadError(f"{module_name!r} has no attribute {attr!r}") from None
    if not callable(getattr(target, "setup", None)):
        check_callback(spec, target)
    return target


def check_callback(name: str, target: object) -> None:
    missing = [fn for fn in REQUIRED_FUNCTIONS if not callable(getattr(target, fn, None))]
    if missing:
        raise CallbackLoadError(
            f"{name} lacks the required function{'s' if len(missing) > 1 else ''} "
            + ", ".join(f"{fn}()" for fn in missing)
        )


def options_type(target: object) -> type[Any] | None:
    """The callback's ``Options`` dataclass, if it declares one."""
    options = getattr(target, "Options", None)
    if isinstance(options, type) and dataclasses.is_dataclass(options):
        return options
    return None


async def resolve_callback(name: str, target: object, context: ListenerContext) -> CallbackRunner:
    """Run the module's optional ``setup`` and wrap the resulting callback."""
    setup = getattr(target, "setup", None)
    if callable(setup):
        target = await _adapt(setup)(context)
    return await CallbackRunner.create(name, target)


def options_mapping(options: object) -> Mapping[str, Any]:
    """The options as a plain mapping, for logging and ``rabbitsocks check``."""
    if dataclasses.is_dataclass(options) and not isinstance(options, type):
        return dataclasses.asdict(options)
    if isinstance(options, Mapping):
        return options
    return {}
