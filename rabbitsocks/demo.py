"""The demo page: ``GET /`` on listeners that enable it, and what it needs under ``/demo/``.

The page (``demo/index.html`` in the repository) and the official ``socket.io-client`` and
``@stomp/stompjs`` bundles are built into ``rabbitsocks/demo/`` by ``scripts/build-demo``,
from npm, so that a browser never loads code from a CDN. Routes:

=========================  ==========================================================
``GET /``                  the page (``no-cache``: revalidated with its ETag)
``GET /demo/config.json``  ``{"rpc": <RPC HTTP base URL> | null, "stomp": <STOMP
                           WebSocket URL> | null, "version": ...}``
``GET /demo/<asset>``      the client bundles, source map and licences (a day)
=========================  ==========================================================

A listener whose assets were not built answers 503 with the command that builds them.

The RPC HTTP endpoint listens on another port, hence another origin: the page calls it
with CORS, which ``rpc_cors_middleware`` answers for the origins ``demo_origins`` lists.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware
from yarl import URL

from rabbitsocks import __version__
from rabbitsocks.config import Interface

__all__ = [
    "ASSETS",
    "NOT_BUILT",
    "add_demo_routes",
    "demo_origins",
    "rpc_cors_middleware",
]

#: Where ``scripts/build-demo`` puts the page and the vendored client.
ASSETS: Final = Path(__file__).resolve().parent / "demo"

NOT_BUILT: Final = "the demo page is not built: run scripts/build-demo\n"

_PAGE: Final = "index.html"
_HTML: Final = "text/html; charset=utf-8"
# RFC 9239: text/javascript is the one JavaScript media type.
_JAVASCRIPT: Final = "text/javascript; charset=utf-8"

#: The assets served under ``/demo/``: name -> (content type, Cache-Control).
_STATIC: Final[dict[str, tuple[str, str]]] = {
    "socket.io.min.js": (_JAVASCRIPT, "public, max-age=86400"),
    "socket.io.min.js.map": ("application/json", "public, max-age=86400"),
    "socket.io-client.LICENSE": ("text/plain; charset=utf-8", "public, max-age=86400"),
    "stomp.umd.min.js": (_JAVASCRIPT, "public, max-age=86400"),
    "stompjs.LICENSE": ("text/plain; charset=utf-8", "public, max-age=86400"),
}

_INLINE = re.compile(rb"<(script|style)>(.*?)</\1>", re.DOTALL)
_WILDCARD_HOSTS: Final = frozenset({"0.0.0.0", "::", ""})
_LOOPBACK_HOSTS: Final = ("127.0.0.1", "localhost", "[::1]")


@dataclass(frozen=True, slots=True)
class _Page:
    body: bytes
    etag: str
    #: CSP sources of the page's inline <script> and <style> elements, by element.
    hashes: dict[str, str]


def _page(path: Path) -> _Page:
    body = path.read_bytes()
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for match in _INLINE.finditer(body):
        digest = base64.b64encode(hashlib.sha256(match.group(2)).digest()).decode()
        hashes[match.group(1).decode()].append(f"'sha256-{digest}'")
    etag = hashlib.sha256(body).hexdigest()[:32]
    return _Page(body, f'"{etag}"', {kind: " ".join(h) for kind, h in hashes.items()})


def _not_built() -> web.Response:
    return web.Response(status=503, text=NOT_BUILT, headers={"Cache-Control": "no-store"})


def _rpc_url(rpc_url: str | None, request: web.Request) -> str | None:
    """``rpc_url`` (or a STOMP endpoint's URL) as the browser must use it: an endpoint
    bound to every interface (``0.0.0.0``, ``::``) is reached on the host the browser used
    for the page."""
    if rpc_url is None:
        return None
    url = URL(rpc_url)
    if url.host in _WILDCARD_HOSTS and request.url.host:
        url = url.with_host(request.url.host)
    return str(url).rstrip("/")


def add_demo_routes(
    app: web.Application,
    *,
    rpc_url: str | None,
    assets: Path | None = None,
    stomp_url: Callable[[], str | None] | str | None = None,
) -> None:
    """Serve the demo page on ``app``: ``GET /``, ``/demo/config.json`` and the assets.

    ``rpc_url`` is the base URL of the RPC HTTP endpoint (``http://127.0.0.1:8081/rpc``),
    or ``None`` when it is off (the page then cannot publish). ``stomp_url`` is where a
    ``callbacks.stomp`` listener serves (``ws://127.0.0.1:8083/websocket/``), or a function
    asked per request (a listener may bind its port after this one), or ``None``: the page
    then offers no STOMP. ``assets`` defaults to the directory ``scripts/build-demo`` fills.
    """
    directory = ASSETS if assets is None else assets

    def stomp(request: web.Request) -> str | None:
        url = stomp_url() if callable(stomp_url) else stomp_url
        return _rpc_url(url, request) if url is not None else None

    async def page(request: web.Request) -> web.StreamResponse:
        path = directory / _PAGE
        try:
            built = await asyncio.to_thread(_page, path)
        except FileNotFoundError:
            return _not_built()
        rpc = _rpc_url(rpc_url, request)
        stomp_ws = stomp(request)
        connect = "'self'"
        if rpc is not None:
            connect += f" {URL(rpc).origin()}"
        if stomp_ws is not None:
            connect += f" {URL(stomp_ws).origin()}"
        script = f"'self' {built.hashes['script']}".rstrip()
        style = built.hashes["style"] or "'none'"
        headers = {
            "Cache-Control": "no-cache",
            "ETag": built.etag,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            # Everything the page loads is ours; its inline code is allowed by hash only.
            # 'self' in connect-src covers ws:// and wss:// to this origin (CSP Level 3).
            "Content-Security-Policy": (
                f"default-src 'none'; script-src {script}; style-src {style}; "
                f"connect-src {connect}; "
                "img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                "frame-ancestors 'none'"
            ),
        }
        if built.etag in request.headers.get(hdrs.IF_NONE_MATCH, ""):
            return web.Response(status=304, headers=headers)
        return web.Response(
            body=built.body, content_type="text/html", charset="utf-8", headers=headers
        )

    async def config(request: web.Request) -> web.Response:
        return web.json_response(
            {"rpc": _rpc_url(rpc_url, request), "stomp": stomp(request), "version": __version__},
            headers={"Cache-Control": "no-store"},
        )

    async def asset(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in _STATIC:  # an allow-list: nothing else of the directory is served
            raise web.HTTPNotFound()
        path = directory / name
        if not path.is_file():
            return _not_built()
        content_type, cache = _STATIC[name]
        return web.FileResponse(
            path,
            headers={
                "Content-Type": content_type,
                "Cache-Control": cache,
                "X-Content-Type-Options": "nosniff",
            },
        )

    app.router.add_get("/", page)
    app.router.add_get("/demo/config.json", config)
    app.router.add_get("/demo/{name}", asset)


# --- CORS for the RPC HTTP endpoint --------------------------------------------------------


def demo_origins(interface: Interface, port: int, *, tls: bool = False) -> frozenset[str]:
    """The origins (RFC 6454) a browser sends from a demo page served on ``interface``
    bound to ``port``: its host when it names one, and the loopback names when it is
    loopback or every interface. Other names (a DNS name, a proxy) must be listed in
    the configuration: they cannot be known here."""
    scheme = "https" if tls else "http"
    host = interface.host
    hosts: set[str] = set()
    if host is None or host in _WILDCARD_HOSTS or host in ("127.0.0.1", "::1", "localhost"):
        hosts.update(_LOOPBACK_HOSTS)
    if host is not None and host not in _WILDCARD_HOSTS:
        hosts.add(f"[{host}]" if ":" in host else host)
    return frozenset(f"{scheme}://{h}:{port}" for h in hosts)


def rpc_cors_middleware(
    allowed: Callable[[str], bool],
) -> Middleware:
    """An aiohttp middleware answering CORS (Fetch standard) for the origins ``allowed``
    accepts, and refusing with 403 a request from any other origin.

    Back ends send no ``Origin`` and are served as before. A browser sends one on every
    cross-origin POST: a JSON or protobuf body and ``Authorization`` make it preflight
    with ``OPTIONS`` first, which this answers. The token is sent by the page's own code,
    not as a credential of the browser, so ``Access-Control-Allow-Credentials`` is not
    needed. ``allowed`` is called per request, so the listeners' ports may be bound
    after the RPC endpoint started.
    """

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None:
            return await handler(request)
        if not allowed(origin):
            return web.json_response(
                {"error": f"forbidden: origin {origin!r} is not allowed"}, status=403
            )
        cors_headers = {
            hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: origin,
            hdrs.VARY: hdrs.ORIGIN,
        }
        if request.method == hdrs.METH_OPTIONS:
            if hdrs.ACCESS_CONTROL_REQUEST_METHOD not in request.headers:
                raise web.HTTPMethodNotAllowed(
                    request.method, [hdrs.METH_POST], headers=cors_headers
                )
            return web.Response(
                status=204,
                headers={
                    **cors_headers,
                    hdrs.ACCESS_CONTROL_ALLOW_METHODS: hdrs.METH_POST,
                    hdrs.ACCESS_CONTROL_ALLOW_HEADERS: "Authorization, Content-Type",
                    hdrs.ACCESS_CONTROL_MAX_AGE: "600",
                },
            )
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # 404, 405 from the router: readable by the page
            exc.headers.update(cors_headers)
            raise
        response.headers.update(cors_headers)
        response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = "Retry-After"
        return response

    return cors
