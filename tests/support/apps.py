"""aiohttp applications served on 127.0.0.1, on a free port, for as long as a test needs them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

__all__ = ["Serve", "app_server", "served"]

#: Serves an app until the end of the test; returns its base URL, ``http://127.0.0.1:<port>``.
Serve = Callable[[web.Application], Awaitable[str]]


@contextlib.asynccontextmanager
async def served(app: web.Application) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1, port 0; yields its base URL, ``http://127.0.0.1:<port>``."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def app_server() -> AsyncIterator[Serve]:
    """A ``Serve`` for a ``serve`` fixture: every app it served stops when this ends."""
    async with contextlib.AsyncExitStack() as stack:

        async def serve(app: web.Application) -> str:
            return await stack.enter_async_context(served(app))

        yield serve
