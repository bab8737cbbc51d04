"""The RPC endpoints of a server: goridge TCP and HTTP over one ``PublishService``.

Started after the brokers and stopped before them, so that in-flight publishes can still be
confirmed while the endpoints drain.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable

from aiohttp import web

from rabbitsocks.config import Interface, RpcConfig
from rabbitsocks.errors import ConfigError
from rabbitsocks.rpc.goridge_server import GoridgeLimits, GoridgeServer, start_goridge_server
from rabbitsocks.rpc.http import make_rpc_app
from rabbitsocks.rpc.service import PublishService
from rabbitsocks.services import Services

__all__ = ["RpcEndpoints"]

logger = logging.getLogger("rabbitsocks.rpc")


class RpcEndpoints:
    """goridge and HTTP RPC, as configured; either may be off."""

    def __init__(
        self,
        config: RpcConfig,
        services: Services,
        *,
        source: str = "<config>",
        cors: Callable[[str], bool] | None = None,
    ):
        self.config = config
        self.source = source
        self._cors = cors
        self.service = PublishService(
            services.brokers,
            services.default_broker,
            max_request_bytes=config.max_request_size,
            confirm_timeout=config.confirm_timeout,
        )
        self.goridge: GoridgeServer | None = None
        self._http_runner: web.AppRunner | None = None
        self.urls: list[str] = []

    async def start(self) -> None:
        config = self.config
        if config.goridge is not None:
            iface = config.goridge
            try:
                limits = GoridgeLimits(
                    max_connections=config.goridge_max_connections,
                    read_timeout=config.read_timeout,
                    idle_timeout=config.goridge_idle_timeout,
                )
                self.goridge = await start_goridge_server(
                    self.service, iface.host or "127.0.0.1", iface.port, limits
                )
            except OSError as exc:
                raise self._bind_error("rpc.goridge", iface, exc) from None
            self.urls.append(f"tcp://{_host(iface)}:{self.goridge.port} (goridge)")
        if config.http is not None:
            iface = config.http
            app = make_rpc_app(self.service, config.token, read_timeout=config.read_timeout)
            if self._cors is not None:
                from rabbitsocks.demo import rpc_cors_middleware

                app.middlewares.append(rpc_cors_middleware(self._cors))
            runner = web.AppRunner(app, handle_signals=False, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, iface.host or "127.0.0.1", iface.port)
            try:
                await site.start()
            except OSError as exc:
                await runner.cleanup()
                raise self._bind_error("rpc.http", iface, exc) from None
            self._http_runner = runner
            port = runner.addresses[0][1]
            self.urls.append(f"http://{_host(iface)}:{port}/rpc/ (HTTP)")

    @property
    def http_port(self) -> int | None:
        if self._http_runner is None:
            return None
        port: int = self._http_runner.addresses[0][1]
        return port

    def _bind_error(self, key: str, iface: Interface, exc: OSError) -> ConfigError:
        if exc.errno == errno.EADDRINUSE:
            return ConfigError(
                self.source, key, f"port {iface.port} is already in use (expected a free port)"
            )
        return ConfigError(self.source, key, f"cannot listen on {iface}: {exc.strerror or exc}")

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting calls, let calls in progress answer, drain PublishAsync."""
        if self.goridge is not None:
            await self.goridge.close(grace)
            self.goridge = None
        if self._http_runner is not None:
            await self._http_runner.cleanup()
            self._http_runner = None
        await self.service.close(grace)


def _host(iface: Interface) -> str:
    host = iface.host or "127.0.0.1"
    return f"[{host}]" if ":" in host else host
