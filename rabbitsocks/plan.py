"""From a valid configuration to what will run: callbacks resolved once, before start-up.

``config.py`` reads YAML and imports nothing of the user's. This module is the one step
between it and the server: for each listener it imports the callback module, parses the
listener's ``options`` against the module's ``Options`` (with the configured broker names,
for fields declared ``one_of("brokers")``), and makes the checks a start-up would make
otherwise only when it got there: the TLS certificate and key load (a broker's TLS files
too), a JWT public key reads, every authorization hook (``auth.connect``, and any
``HookConfig`` among the options, such as pubsub's ``join_auth``) loads.

``rabbitsocks check`` and ``rabbitsocks serve`` both go through ``plan_config``, and
``start_listener``/``mount`` through ``plan_listener``, so what one accepts the others
accept, with the same one-line error::

    config/x.yaml: listeners[0].options.broker: expected one of the configured brokers
    (memory, amqp), got 'nosuch'

Nothing here starts a broker or binds a port: those can only fail at start-up.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rabbitsocks.auth import hook_from_config
from rabbitsocks.brokers.tls import AmqpTls, TlsFileError
from rabbitsocks.callback import import_callback, options_type
from rabbitsocks.config import (
    BrokerTlsConfig,
    Config,
    HookConfig,
    ListenerConfig,
    check_fields,
    parse_options,
)
from rabbitsocks.errors import CallbackLoadError, ConfigError

if TYPE_CHECKING:
    import aiohttp

__all__ = ["ListenerPlan", "Plan", "plan_config", "plan_listener", "read_public_key", "tls_context"]


@dataclass(frozen=True, slots=True)
class ListenerPlan:
    """A listener ready to start: its configuration with parsed options, and its callback."""

    #: The listener's configuration; ``options`` is the callback's ``Options`` instance
    #: (or the mapping, for a callback without ``Options``).
    config: ListenerConfig
    #: The imported callback: a module, or the object named by ``module:attr``.
    target: object


@dataclass(frozen=True, slots=True)
class Plan:
    """A whole configuration ready to start."""

    config: Config
    listeners: tuple[ListenerPlan, ...]


def plan_config(config: Config) -> Plan:
    """Resolve every listener of ``config``; ``ConfigError`` for the first mistake."""
    listeners = tuple(
        plan_listener(listener, brokers=config.broker_names, source=config.source)
        for listener in config.listeners
    )
    planned = dataclasses.replace(config, listeners=tuple(p.config for p in listeners))
    for name, broker in config.brokers.items():
        _check_broker_tls(name, broker.tls, config.source)
    return Plan(planned, listeners)


def _check_broker_tls(name: str, tls: BrokerTlsConfig, source: str) -> None:
    """The PEM files of ``brokers.<name>.tls`` load, as the broker loads them at start."""
    if tls.ca_file is None and tls.cert_file is None:
        return  # nothing to read
    try:
        AmqpTls.from_config(tls).context()
    except TlsFileError as exc:
        raise ConfigError(source, f"brokers.{name}.tls.{exc.field}", exc.message) from None


def plan_listener(
    config: ListenerConfig,
    *,
    brokers: Sequence[str],
    source: str,
    target: object | None = None,
) -> ListenerPlan:
    """Import the listener's callback (unless ``target`` is given), parse its options and
    check what its start would load. ``brokers`` are the configured broker names."""
    key = config.key
    if target is None:
        try:
            target = import_callback(config.callback)
        except CallbackLoadError as exc:
            raise ConfigError(source, f"{key}.callback", str(exc)) from None
    schema = options_type(target)
    if schema is not None and not dataclasses.fields(schema) and config.options:
        name = next(iter(config.options)) if isinstance(config.options, dict) else ""
        where = f"{key}.options.{name}" if name else f"{key}.options"
        raise ConfigError(source, where, f"unknown key ({config.callback} takes no options)")
    try:
        options = parse_options(schema, config.options, f"{key}.options", {"brokers": brokers})
    except ConfigError as exc:
        raise ConfigError(source, exc.key, exc.message) from None
    check_fields(config, key, source=source)  # settings built in code (start_listener)
    planned = dataclasses.replace(config, options=options)
    tls_context(planned, source)
    if config.auth.jwt is not None and config.auth.jwt.public_key is not None:
        read_public_key(config.auth.jwt.public_key, f"{key}.auth.jwt.public_key", source)
    for where, hook in _hooks(planned):
        _check_hook(where, hook, source)
    return ListenerPlan(planned, target)


def tls_context(config: ListenerConfig, source: str) -> ssl.SSLContext | None:
    """The listener's server TLS context; ``ConfigError`` when its files do not load."""
    tls = config.tls
    if tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            source,
            f"{config.key}.tls",
            f"cannot load certificate {tls.cert!r} and key {tls.key!r}: {exc}",
        ) from None
    return context


def read_public_key(path: str, key: str, source: str) -> str:
    """The PEM text of a JWT public key file; ``ConfigError`` when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as pem:
            return pem.read()
    except OSError as exc:
        raise ConfigError(source, key, f"cannot read {path!r}: {exc}") from None


def _hooks(config: ListenerConfig) -> list[tuple[str, HookConfig]]:
    """Every authorization hook of a listener, with its key: ``auth.connect`` and those
    among the callback's options (a ``HookConfig`` field, however deep)."""
    found = []
    if config.auth.connect is not None:
        found.append((f"{config.key}.auth.connect", config.auth.connect))

    def walk(value: Any, where: str) -> None:
        if isinstance(value, HookConfig):
            found.append((where, value))
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name), f"{where}.{f.name}")

    walk(config.options, f"{config.key}.options")
    return found


def _check_hook(key: str, hook: HookConfig, source: str) -> None:
    """Load the hook as start-up will (its callable imported, its URL checked)."""
    hook_from_config(key, hook, _no_session, source)


def _no_session() -> aiohttp.ClientSession:  # pragma: no cover - never called when planning
    raise RuntimeError("a hook loaded to be checked is never called")
