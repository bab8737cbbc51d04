"""Listeners and the server: one aiohttp application and site per listener, one process.

Each listener is an aiohttp application with its own runner and site, serving bare
WebSocket on ``/websocket/<path>`` and Socket.IO on ``/socket.io/`` for its callback; all
listeners of a process share one event loop and one set of ``Services`` (brokers, hubs).
An application per listener (rather than one application dispatching on the local port)
keeps per-listener settings, such as Socket.IO's, where python-socketio wants them.

Graceful shutdown is ordered: stop accepting, close every connection with 1001 "going away"
(Socket.IO clients are disconnected), wait for every ``terminate`` up to the shutdown
timeout, then release the sockets, then unbind and close the brokers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from rabbitsocks.auth import ConnectAuthorizer, JwtVerifier, hook_from_config
from rabbitsocks.callback import (
    CallbackRunner,
    ListenerContext,
    import_callback,
    resolve_callback,
)
from rabbitsocks.config import Config, Interface, ListenerConfig, parse_interface
from rabbitsocks.connection import CLOSE_GOING_AWAY
from rabbitsocks.errors import ConfigError
from rabbitsocks.httplog import install_aiohttp_log_filter
from rabbitsocks.origins import OriginPolicy
from rabbitsocks.plan import (
    ListenerPlan,
    Plan,
    plan_config,
    plan_listener,
    read_public_key,
    tls_context,
)
from rabbitsocks.services import Services
from rabbitsocks.stats import ListenerStats
from rabbitsocks.transports.acceptor import Acceptor
from rabbitsocks.transports.addresses import ClientAddresses
from rabbitsocks.transports.affinity import Affinity
from rabbitsocks.transports.bare import BareWebSocket
from rabbitsocks.transports.engineio import EngineIO
from rabbitsocks.transports.front import Front, Upgrader
from rabbitsocks.transports.gate import Gate
from rabbitsocks.transports.socketio import Namespaces

if TYPE_CHECKING:
    from rabbitsocks.admin import AdminEndpoint
    from rabbitsocks.rpc.endpoints import RpcEndpoints

__all__ = ["Listener", "Server", "mount", "start_listener"]

logger = logging.getLogger("rabbitsocks.server")


class Listener:
    """One listening port with its callback. Also the handle ``start_listener`` returns.

    It assembles the transports and gives them an ``Acceptor`` (never itself): the gate,
    the callback and the limits are all a transport sees of its listener.
    """

    def __init__(
        self,
        config: ListenerConfig,
        callback: CallbackRunner,
        services: Services,
        *,
        source: str = "<api>",
        owns_services: bool = False,
        app: web.Application | None = None,
        reuse_port: bool = False,
        affinity: Affinity | None = None,
        authorizer: ConnectAuthorizer | None = None,
    ) -> None:
        # aiohttp logs a malformed request with its bytes (a ?token=, a cookie) and a
        # traceback: one line of ours instead, whoever set up the logging.
        install_aiohttp_log_filter()
        self.config = config
        self.callback = callback
        self.options = config.options
        self.services = services
        self.name = config.name
        self._source = source
        self._owns_services = owns_services
        self._reuse_port = reuse_port
        self.stats = ListenerStats()
        limits = config.limits
        self.gate = Gate(
            origins=OriginPolicy(config.origins),
            # Made by whoever also gave it to the callback's setup (``ListenerContext``).
            authorizer=authorizer or _connect_authorizer(config, services, source),
            max_connections=limits.max_connections,
            max_connections_per_address=limits.max_connections_per_address,
            connect_rate=limits.connect_rate,
            connect_burst=limits.connect_burst,
            timeout=limits.handshake_timeout,
            stats=self.stats,
        )
        self.acceptor = Acceptor(
            name=self.name,
            callback=callback,
            options=config.options,
            gate=self.gate,
            limits=limits,
            websocket=config.websocket,
            socketio=config.socketio,
            stats=self.stats,
            addresses=ClientAddresses(config.trusted_proxies, config.proxy_protocol),
        )
        self.affinity = affinity
        if affinity is not None:
            affinity.passed = self.stats.passed_on
        self._stopped = False
        self._servers: list[asyncio.AbstractServer] = []
        self._runner: web.AppRunner | None = None
        self._front: Front | None = None
        self._sockets: list[socket.socket] = []
        # Our own application, or the one we are mounted in (see ``mount``).
        self.app = web.Application() if app is None else app
        self.websocket = BareWebSocket(self.acceptor)
        self.websocket.add_routes(self.app)
        self.engineio: EngineIO | None = None
        if config.socketio.enabled:
            acceptor = self.acceptor
            self.engineio = EngineIO(
                acceptor, lambda session: Namespaces(acceptor, session), affinity
            )
            self.engineio.add_routes(self.app)

    @property
    def closing(self) -> bool:
        return self.gate.closing

    @property
    def connections(self) -> int:
        """Connections counted against the limits: bare WebSockets, Socket.IO namespace
        connections, and Engine.IO sessions with no namespace yet."""
        return self.acceptor.connections

    # --- addresses ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if not self._sockets:
            raise RuntimeError("the listener is not started")
        port: int = self._sockets[0].getsockname()[1]
        return port

    @property
    def urls(self) -> list[str]:
        """Where clients connect: the WebSocket base URL per bound address."""
        scheme = "wss" if self.config.tls else "ws"
        urls = []
        for sock in self._sockets:
            host, port = sock.getsockname()[:2]
            if sock.family == socket.AF_INET6:
                host = f"[{host}]"
            urls.append(f"{scheme}://{host}:{port}/websocket/")
        return urls

    # --- start and stop -------------------------------------------------------------------

    async def start(self) -> None:
        key = f"{self.config.key}.interface"
        ssl_context = tls_context(self.config, self._source)
        try:
            self._sockets = _bind(self.config.interface, reuse_port=self._reuse_port)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                message = (
                    f"port {self.config.interface.port} is already in use"
                    " (expected a free port; is another server running?)"
                )
            else:
                message = f"cannot listen on {self.config.interface}: {exc.strerror or exc}"
            raise ConfigError(self._source, key, message) from None
        runner = self._runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=1.0,
            # aiohttp closes a kept-alive connection idle for this long, and reads the rest of
            # a body it did not need (a refused POST's) for at most this long.
            keepalive_timeout=self.config.limits.handshake_timeout,
            lingering_time=self.config.limits.handshake_timeout,
        )
        await runner.setup()
        server = runner.server
        assert server is not None
        upgraders: list[Upgrader] = [self.websocket]
        if self.engineio is not None:
            upgraders.append(self.engineio)

        def front_of(internal: bool) -> Front:
            return Front(
                http=server,
                upgraders=upgraders,
                timeout=self.config.limits.handshake_timeout,
                stats=self.stats,
                addresses=self.acceptor.addresses,
                internal=internal,
                affinity=None if internal else self.affinity,
            )

        front = self._front = front_of(internal=False)
        if self.affinity is not None:
            # The workers' internal socket: the same front, trusted, never passing on again.
            await self.affinity.start(front_of(internal=True), self._adopt)
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            self._servers.append(await loop.create_server(front, sock=sock, ssl=ssl_context))

    def _adopt(self, sock: socket.socket, data: bytes, client: str) -> None:
        """Serve a connection another worker handed over (see ``transports.affinity``)."""
        front = self._front
        if front is None or self.closing:
            sock.close()
            return

        async def adopt() -> None:
            loop = asyncio.get_running_loop()
            try:
                await loop.connect_accepted_socket(lambda: front.adopting(data, client), sock)
            except OSError:
                sock.close()

        front.spawn(adopt())

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, close every connection with 1001, wait for their ``terminate``
        (at most ``timeout`` seconds), then release the port."""
        if self._stopped:
            return
        self._stopped = True
        self.gate.closing = True
        for server in self._servers:
            server.close()  # stops accepting; open connections stay
        self.acceptor.close_all(CLOSE_GOING_AWAY, "going away")
        if self.engineio is not None:
            self.engineio.close_all()
        try:
            await asyncio.wait_for(self.gate.registry.wait_idle(), timeout)
        except TimeoutError:
            logger.warning(
                "%s: %d connection(s) still open after %.1fs; dropping them",
                self.name,
                self.connections,
                timeout,
            )
        if self.affinity is not None:
            await self.affinity.stop()
        if self._front is not None:
            await self._front.wait_upgrades()
        if self._runner is not None:
            await self._runner.cleanup()  # aiohttp's connections (polling, the demo page)
        if self.acceptor.heartbeat is not None:
            self.acceptor.heartbeat.stop()
        for sock in self._sockets:
            sock.close()
        if self._owns_services:
            await self.services.close()


def _connect_authorizer(
    config: ListenerConfig, services: Services, source: str
) -> ConnectAuthorizer | None:
    auth = config.auth
    key = f"{config.key}.auth"
    jwt = None
    if auth.jwt is not None:
        settings = auth.jwt
        public_key = None
        if settings.public_key is not None:
            public_key = read_public_key(settings.public_key, f"{key}.jwt.public_key", source)
        jwt = JwtVerifier(
            secret=settings.secret,
            public_key=public_key,
            algorithms=settings.algorithms,
            query_param=settings.query_param,
            audience=settings.audience,
            issuer=settings.issuer,
            required=settings.required,
        )
    hook = None
    if auth.connect is not None:
        hook = hook_from_config(f"{key}.connect", auth.connect, services.http_session, source)
    if jwt is None and hook is None:
        return None
    return ConnectAuthorizer(jwt, hook)


def _bind(interface: Interface, *, reuse_port: bool = False) -> list[socket.socket]:
    """Listening sockets for ``interface``: every address of the host (all interfaces
    when it has none), each with SO_REUSEADDR like aiohttp's own sites, and SO_REUSEPORT
    when several worker processes share the port (the kernel spreads connections)."""
    host = interface.host
    infos = socket.getaddrinfo(
        host, interface.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    if host is None:
        # All interfaces: IPv4 and, where the host has it, IPv6 on the same port.
        infos = [i for i in infos if i[0] == socket.AF_INET] + [
            i for i in infos if i[0] == socket.AF_INET6
        ]
    sockets: list[socket.socket] = []
    seen = set()
    port = interface.port
    try:
        for family, type_, proto, _, addr in infos:
            if (family, addr[0]) in seen:
                continue
            seen.add((family, addr[0]))
            sock = socket.socket(family, type_, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((addr[0], port, *addr[2:]))
            except OSError:
                if family == socket.AF_INET6 and host is None:
                    sockets.pop().close()  # no IPv6 here: IPv4 alone is fine
                    continue
                raise
            sock.listen(1024)
            sock.setblocking(False)
            if port == 0:  # every address of one listener shares the port first bound
                port = sock.getsockname()[1]
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Server:
    """Every listener of a configuration, with their shared services.

    With ``workers > 1`` this is one of several processes serving the same configuration
    (``rabbitsocks serve --workers N``): listeners share their ports with SO_REUSEPORT,
    each worker has its own broker connection and queue, the RPC endpoints run in worker
    0 only, and worker ``i`` serves the admin endpoint on the configured port plus ``i``.
    """

    def __init__(
        self,
        config: Config,
        *,
        worker: int = 0,
        workers: int = 1,
        plan: Plan | None = None,
        run_dir: Path | None = None,
    ) -> None:
        # Callbacks are resolved here, before anything starts: a mistake is a ConfigError
        # now, as `rabbitsocks check` reports it, not after the brokers connected.
        self.plan = plan if plan is not None else plan_config(config)
        config = self.plan.config
        self.config = config
        self.worker = worker
        self.workers = workers
        #: Where the workers' internal sockets live (``serve --workers``).
        self.run_dir = run_dir
        self.services = Services.from_config(config)
        self.listeners: list[Listener] = []
        self.rpc: RpcEndpoints | None = None
        self.admin: AdminEndpoint | None = None
        cors = config.rpc.cors_origins
        self._rpc_cors = OriginPolicy(cors) if cors else None
        self._admin_runner: web.AppRunner | None = None
        self.stopping = False

    async def start(self) -> None:
        """Start the brokers, then every listener; raises ``ConfigError`` (after
        releasing what was started) if a listener cannot start."""
        await self.services.start()
        try:
            if self.config.admin is not None:
                admin = self.config.admin
                if admin.port:
                    admin = Interface(admin.host, admin.port + self.worker)
                await self._start_admin(admin)
            if self.config.rpc.enabled and self.worker == 0:
                from rabbitsocks.rpc.endpoints import RpcEndpoints

                self.rpc = RpcEndpoints(
                    self.config.rpc,
                    self.services,
                    source=self.config.source,
                    cors=self._cors_allows,
                )
                if self.admin is not None:
                    self.rpc.service.observe_publish = self.admin.publish_latency.observe
                await self.rpc.start()
            for index, planned in enumerate(self.plan.listeners):
                affinity = None
                if self.workers > 1 and self.run_dir is not None:
                    affinity = Affinity(self.run_dir, index, self.worker, self.workers)
                listener = await _make_listener(
                    planned,
                    self.services,
                    source=self.config.source,
                    reuse_port=self.workers > 1,
                    affinity=affinity,
                )
                if planned.config.demo:
                    from rabbitsocks.demo import add_demo_routes

                    add_demo_routes(
                        listener.app, rpc_url=self._demo_rpc_url(), stomp_url=self._demo_stomp_url
                    )
                self.listeners.append(listener)
                await listener.start()
        except BaseException:
            await self.stop()
            raise

    async def _start_admin(self, where: Interface) -> None:
        from rabbitsocks.admin import AdminEndpoint

        self.admin = AdminEndpoint(self)
        runner = web.AppRunner(self.admin.app(), handle_signals=False, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, where.host or "127.0.0.1", where.port).start()
        except OSError as exc:
            await runner.cleanup()
            reason = (
                f"port {where.port} is already in use (expected a free port)"
                if exc.errno == errno.EADDRINUSE
                else f"cannot listen on {where}: {exc.strerror or exc}"
            )
            raise ConfigError(self.config.source, "admin", reason) from None
        self._admin_runner = runner

    def _demo_rpc_url(self) -> str | None:
        """Where the demo page publishes: the HTTP RPC endpoint, when there is one."""
        http = self.config.rpc.http
        if self.rpc is None or http is None or self.rpc.http_port is None:
            return None
        host = http.host or "127.0.0.1"
        return f"http://{f'[{host}]' if ':' in host else host}:{self.rpc.http_port}/rpc"

    def _demo_stomp_url(self) -> str | None:
        """Where the demo page speaks STOMP: the first STOMP listener accepting connections
        (asked per request: it may have bound its port after the demo's listener)."""
        for listener in self.listeners:
            if listener.config.callback.partition(":")[0] != "callbacks.stomp":
                continue
            if listener.closing:
                continue
            try:
                return listener.urls[0]
            except (RuntimeError, IndexError):
                continue
        return None

    def _cors_allows(self, origin: str) -> bool:
        """Browser origins the HTTP RPC endpoint answers: configured ones, and the pages of
        demo listeners (asked per request, so ports bound after the RPC start count)."""
        from rabbitsocks.demo import demo_origins

        if self._rpc_cors is not None and self._rpc_cors.allows(origin):
            return True
        for listener in self.listeners:
            if not listener.config.demo or listener.closing:
                continue
            try:
                port = listener.port
            except RuntimeError:
                continue
            tls = listener.config.tls is not None
            if origin in demo_origins(listener.config.interface, port, tls=tls):
                return True
        return False

    @property
    def admin_url(self) -> str | None:
        if self._admin_runner is None:
            return None
        host, port = self._admin_runner.addresses[0][:2]
        return f"http://{host}:{port}/"

    def unready(self) -> list[str]:
        """Why the server should not get traffic now (empty: ready)."""
        problems = []
        if self.stopping:
            problems.append("shutting down")
        started = {listener.name for listener in self.listeners if not listener.closing}
        for config in self.config.listeners:
            if config.name not in started:
                problems.append(f"listener {config.name} is not accepting connections")
        for name, hub in self.services.hubs.items():
            if not hub.connected:
                problems.append(f"broker {name} is not connected")
        return problems

    async def stop(self) -> None:
        self.stopping = True
        self.services.drain()
        timeout = self.config.shutdown_timeout
        await asyncio.gather(*(listener.stop(timeout) for listener in self.listeners))
        if self.rpc is not None:
            await self.rpc.stop(min(timeout, 5.0))
        await self.services.close()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
            self._admin_runner = None
        if self.admin is not None:
            self.admin.gc_pauses.uninstall()


async def _make_listener(
    planned: ListenerPlan,
    services: Services,
    *,
    source: str,
    owns_services: bool = False,
    reuse_port: bool = False,
    affinity: Affinity | None = None,
) -> Listener:
    config = planned.config
    authorizer = _connect_authorizer(config, services, source)
    context = ListenerContext(
        name=config.name, options=config.options, services=services, authorizer=authorizer
    )
    try:
        runner = await resolve_callback(config.callback, planned.target, context)
    except (ValueError, LookupError) as exc:  # setup() rejecting its options
        raise ConfigError(source, f"{config.key}.options", str(exc)) from None
    return Listener(
        config,
        runner,
        services,
        source=source,
        owns_services=owns_services,
        reuse_port=reuse_port,
        affinity=affinity,
        authorizer=authorizer,
    )


async def mount(
    app: web.Application,
    callback: str | object = "callbacks.echo",
    options: Mapping[str, Any] | object | None = None,
    *,
    services: Services | None = None,
    **settings: Any,
) -> Listener:
    """Serve ``/websocket/`` and ``/socket.io/`` for ``callback`` inside your own aiohttp
    application, before it starts. Its shutdown closes the connections with 1001.

    The returned handle has no port of its own (your application's runner binds it).
    Arguments are those of ``start_listener``.
    """
    listener = await _api_listener(0, callback, options, services, settings, app=app)

    async def on_shutdown(_: web.Application) -> None:
        await listener.stop()

    app.on_shutdown.append(on_shutdown)
    return listener


async def start_listener(
    interface: int | str = 0,
    callback: str | object = "callbacks.echo",
    options: Mapping[str, Any] | object | None = None,
    *,
    services: Services | None = None,
    **settings: Any,
) -> Listener:
    """Start one listener and return its handle (``.port``, ``.urls``, ``await .stop()``).

    ``interface`` is a port or ``"host:port"``; port 0 picks a free port. ``callback`` is
    an import string or a callback object. ``services`` shares brokers and hubs between
    listeners; without it the listener gets its own memory broker, closed by ``stop``.
    ``settings`` are further ``ListenerConfig`` fields (``websocket=WebSocketConfig(...)``).
    """
    listener = await _api_listener(interface, callback, options, services, settings)
    try:
        await listener.start()
    except BaseException:
        await listener.stop()
        raise
    return listener


async def _api_listener(
    interface: int | str,
    callback: str | object,
    options: Mapping[str, Any] | object | None,
    services: Services | None,
    settings: Mapping[str, Any],
    *,
    app: web.Application | None = None,
) -> Listener:
    try:
        iface = parse_interface(interface)
    except Exception as exc:
        raise ConfigError("<api>", "interface", str(exc)) from None
    target = import_callback(callback) if isinstance(callback, str) else callback
    name = callback if isinstance(callback, str) else type(callback).__name__
    config = ListenerConfig(
        interface=iface, callback=name, options={} if options is None else options, **settings
    )
    config = dataclasses.replace(config, key="listener")
    brokers = tuple(services.brokers) if services is not None else ("memory",)
    config = plan_listener(config, brokers=brokers, source="<api>", target=target).config
    owns = services is None
    services = services or Services.memory_only()
    if owns:
        await services.start()
    authorizer = _connect_authorizer(config, services, "<api>")
    context = ListenerContext(
        name=config.name, options=config.options, services=services, authorizer=authorizer
    )
    try:
        runner = await resolve_callback(name, target, context)
    except (ValueError, LookupError) as exc:  # setup() rejecting its options
        if owns:
            await services.close()
        raise ConfigError("<api>", "options", str(exc)) from None
    except BaseException:
        if owns:
            await services.close()
        raise
    return Listener(config, runner, services, owns_services=owns, app=app, authorizer=authorizer)
