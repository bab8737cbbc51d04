"""Authorization: who may connect (RoadRunner's ``ws:joinServer``) and join which topics
(``ws:joinTopics``).

Each decision can be made by a JSON Web Token (HS256 or RS256, from the ``token`` query
parameter or ``Authorization: Bearer``), by a Python callable named by import string, or by
an HTTP endpoint that rabbitsocks asks with a POST, as RoadRunner does:

- connect: ``{"method", "path", "headers", "query", "remote"}``; 200 allows; any other
  status is returned to the client with its body and headers; a timeout or an unreachable
  endpoint gives 503.
- join: the same plus ``"topics"`` (and ``"claims"`` when a token was verified); 200
  allows every topic, unless the answer is a JSON object ``{"topics": [...]}`` listing the
  allowed ones; any other status denies them all.

A token's claims are available to callbacks through ``rabbitsocks.current_connection()``.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from rabbitsocks.connection import ConnectionInfo, ConnectRequest
from rabbitsocks.errors import ConfigError, ConnectionRefused
from rabbitsocks.logs import redact_url, scrub
from rabbitsocks.topics import pattern_covers

if TYPE_CHECKING:
    import aiohttp

    from rabbitsocks.config import HookConfig

__all__ = [
    "AuthDenied",
    "ConnectAuthorizer",
    "ConnectRequest",
    "Deny",
    "Hook",
    "JoinAuthorizer",
    "JwtVerifier",
    "hook_from_config",
    "load_hook",
]

logger = logging.getLogger("rabbitsocks.auth")

SessionFactory = Callable[[], "aiohttp.ClientSession"]

# Hop-by-hop and framing headers an endpoint's answer must not pass on to our client.
_DROP_HEADERS = frozenset(
    {"connection", "content-length", "transfer-encoding", "keep-alive", "content-encoding"}
)


@dataclass(frozen=True, slots=True)
class Deny:
    """What a connect hook returns to refuse: the HTTP answer the client gets."""

    status: int = 403
    reason: str = "forbidden"
    headers: Mapping[str, str] = field(default_factory=dict)


class AuthDenied(Exception):
    """A connection attempt was refused; carries the HTTP answer."""

    def __init__(
        self, status: int, reason: str, headers: Mapping[str, str] | None = None, body: bytes = b""
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = dict(headers or {})
        self.body = body or f"{reason}\n".encode()
        super().__init__(f"{status} {reason}")


# --- JSON Web Tokens -------------------------------------------------------------------


class JwtVerifier:
    """Verifies tokens signed with a shared secret (HS*) or an RSA key (RS*)."""

    def __init__(
        self,
        *,
        secret: str | None,
        public_key: str | None,
        algorithms: Sequence[str],
        query_param: str,
        audience: str | None,
        issuer: str | None,
        required: bool,
    ) -> None:
        try:
            import jwt
        except ImportError:  # pragma: no cover - PyJWT is part of the jwt extra
            raise ConfigError(
                "<config>", "auth.jwt", "PyJWT is not installed: pip install 'rabbitsocks[jwt]'"
            ) from None
        self._jwt = jwt
        keys: dict[str, Any] = {}
        if secret:
            keys["HS"] = secret
        if public_key:
            keys["RS"] = public_key
        self._keys = keys
        self.algorithms = list(algorithms)
        self.query_param = query_param
        self.audience = audience
        self.issuer = issuer
        self.required = required

    def token_of(self, request: ConnectRequest) -> str | None:
        token = request.query.get(self.query_param)
        if token:
            return token
        header = request.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
        return None

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims; raises ``AuthDenied(401)`` when it is not valid."""
        jwt = self._jwt
        try:
            header = jwt.get_unverified_header(token)
            algorithm = header.get("alg", "")
            key = self._keys.get(str(algorithm)[:2])
            if algorithm not in self.algorithms or key is None:
                raise AuthDenied(401, f"token algorithm {algorithm!r} is not accepted")
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
            )
        except AuthDenied:
            raise
        except jwt.ExpiredSignatureError:
            raise AuthDenied(401, "token expired") from None
        except jwt.PyJWTError as exc:
            raise AuthDenied(401, f"invalid token: {exc}") from None
        return claims


# --- hooks: a Python callable or an HTTP endpoint --------------------------------------


class Hook:
    """A decision delegated to a callable or an HTTP endpoint."""

    def __init__(
        self,
        *,
        target: Callable[..., Any] | None = None,
        url: str | None = None,
        timeout: float = 5.0,
        session: SessionFactory | None = None,
        name: str = "",
    ) -> None:
        self.target = target
        self.url = url
        self.timeout = timeout
        self.session = session
        # What logs call it: an endpoint's URL may carry credentials (userinfo, ?key=).
        self.name = name or (redact_url(url) if url else getattr(target, "__qualname__", "hook"))

    async def call(self, *args: Any) -> Any:
        assert self.target is not None
        result = self.target(*args)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def post(self, payload: Mapping[str, Any]) -> tuple[int, Mapping[str, str], bytes]:
        """POST ``payload`` as JSON; raise ``AuthDenied(503)`` if there is no answer."""
        import aiohttp

        assert self.url is not None
        assert self.session is not None
        try:
            async with asyncio.timeout(self.timeout):
                async with self.session().post(
                    self.url,
                    data=orjson.dumps(payload),
                    headers={"Content-Type": "application/json"},
                ) as response:
                    body = await response.read()
                    return response.status, response.headers, body
        except TimeoutError:
            logger.warning("authorization endpoint %s timed out", self.name)
            raise AuthDenied(503, "authorization timed out") from None
        except aiohttp.ClientError as exc:
            # aiohttp's text can quote the URL it was given, credentials and all.
            reason = scrub(str(exc)) or type(exc).__name__
            logger.warning("authorization endpoint %s failed: %s", self.name, reason)
            raise AuthDenied(503, "authorization unavailable") from None


def load_hook(
    key: str,
    *,
    callable_spec: str | None,
    url: str | None,
    timeout: float,
    session: SessionFactory,
    source: str = "<config>",
) -> Hook | None:
    """Build a hook from configuration; ``ConfigError`` for an unusable callable."""
    if callable_spec and url:
        raise ConfigError(source, key, "expected either callable or url, not both")
    if url:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(
                source, f"{key}.url", f"expected an http(s) URL, got {redact_url(url)!r}"
            )
        return Hook(url=url, timeout=timeout, session=session)
    if not callable_spec:
        return None
    module_name, _, attr = callable_spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in (attr or "").split("."):
            if part:
                target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            source, f"{key}.callable", f"cannot load {callable_spec!r}: {exc}"
        ) from None
    if not attr or not callable(target):
        raise ConfigError(
            source,
            f"{key}.callable",
            f'expected "package.module:function", got {callable_spec!r}',
        )
    return Hook(target=target, timeout=timeout, name=callable_spec)


def hook_from_config(
    key: str, config: HookConfig, session: SessionFactory, source: str = "<config>"
) -> Hook:
    """The hook a ``HookConfig`` (callable or url) describes."""
    hook = load_hook(
        key,
        callable_spec=config.callable,
        url=config.url,
        timeout=config.timeout,
        session=session,
        source=source,
    )
    assert hook is not None  # HookConfig insists on one of the two
    return hook


class ConnectAuthorizer:
    """The connect decision: a token when one is configured, then the hook.

    A callback whose protocol carries credentials of its own after the handshake (STOMP's
    CONNECT frame: ``login`` and ``passcode``) sets ``deferred`` in its ``setup``: the
    handshake then admits every request (origin and limits still apply), and the callback
    calls ``check`` itself with what it was given, before it lets the client do anything.
    """

    def __init__(self, jwt: JwtVerifier | None, hook: Hook | None) -> None:
        self.jwt = jwt
        self.hook = hook
        #: Authorization happens in the callback's protocol, not at the handshake.
        self.deferred = False

    async def authorize(self, request: ConnectRequest) -> dict[str, Any] | None:
        """The handshake's decision: the verified claims (``None`` without a token, or
        when ``deferred``); ``AuthDenied`` to refuse."""
        if self.deferred:
            return None
        return await self.check(request)

    async def check(
        self, request: ConnectRequest, token: str | None = None
    ) -> dict[str, Any] | None:
        """The decision on ``request``, whether deferred or not: the verified claims
        (``None`` without a token); ``AuthDenied`` to refuse.

        ``token`` is one presented in the callback's protocol (STOMP's ``passcode``); it
        takes the place of one in the request.
        """
        claims: dict[str, Any] | None = None
        if self.jwt is not None:
            token = token or self.jwt.token_of(request)
            if token is not None:
                claims = self.jwt.verify(token)
            elif self.jwt.required:
                raise AuthDenied(
                    401, "a token is required", {"WWW-Authenticate": 'Bearer realm="rabbitsocks"'}
                )
        hook = self.hook
        if hook is None:
            return claims
        if hook.url is not None:
            status, headers, body = await hook.post(request.as_json())
            if status != 200:
                kept = {k: v for k, v in headers.items() if k.lower() not in _DROP_HEADERS}
                raise AuthDenied(status, body.decode("utf-8", "replace").strip(), kept, body)
            return claims
        try:
            verdict = await hook.call(request)
        except ConnectionRefused as exc:
            raise AuthDenied(exc.status, exc.reason) from None
        except Exception:
            logger.exception("connect hook %s failed", hook.name)
            raise AuthDenied(503, "authorization failed") from None
        if isinstance(verdict, Deny):
            raise AuthDenied(verdict.status, verdict.reason, verdict.headers)
        if verdict is False:
            raise AuthDenied(403, "forbidden")
        return claims


class JoinAuthorizer:
    """The join decision for pub/sub topics: a token claim, then the hook."""

    def __init__(self, claim: str | None, hook: Hook | None) -> None:
        self.claim = claim
        self.hook = hook

    async def split(
        self, topics: Sequence[str], connection: ConnectionInfo | None
    ) -> tuple[list[str], dict[str, list[str]]]:
        """``(allowed, {reason: denied})`` for ``topics`` asked by ``connection``."""
        request = connection.request if connection is not None else None
        claims = connection.claims if connection is not None else None
        allowed = list(topics)
        denied: dict[str, list[str]] = {}
        if self.claim is not None:
            patterns = _claim_patterns(claims, self.claim)
            keep = []
            for topic in allowed:
                if any(pattern_covers(p, topic) for p in patterns):
                    keep.append(topic)
                else:
                    denied.setdefault("not allowed by token", []).append(topic)
            allowed = keep
        if allowed and self.hook is not None:
            allowed, more = await self._ask(allowed, connection, request, claims)
            for reason, refused in more.items():
                denied.setdefault(reason, []).extend(refused)
        return allowed, denied

    async def _ask(
        self,
        topics: list[str],
        connection: ConnectionInfo | None,
        request: ConnectRequest | None,
        claims: Mapping[str, Any] | None,
    ) -> tuple[list[str], dict[str, list[str]]]:
        hook = self.hook
        assert hook is not None
        if hook.url is not None:
            payload: dict[str, Any] = request.as_json() if request is not None else {}
            payload["topics"] = topics
            if claims is not None:
                payload["claims"] = claims
            try:
                status, _, body = await hook.post(payload)
            except AuthDenied as exc:
                return [], {exc.reason: topics}
            if status != 200:
                return [], {"not authorized": topics}
            return _partial(topics, body)
        try:
            verdict = await hook.call(list(topics), connection)
        except Exception:
            logger.exception("join hook %s failed", hook.name)
            return [], {"authorization failed": topics}
        if verdict is True or verdict is None:
            return topics, {}
        if verdict is False:
            return [], {"not authorized": topics}
        granted = set(verdict)
        return [t for t in topics if t in granted], _denied(topics, granted)


def _claim_patterns(claims: Mapping[str, Any] | None, claim: str) -> list[str]:
    value = (claims or {}).get(claim)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [p for p in value if isinstance(p, str)]
    return []


def _partial(topics: list[str], body: bytes) -> tuple[list[str], dict[str, list[str]]]:
    """A 200 answer: everything, or only the ``{"topics": [...]}`` it lists."""
    if not body.strip():
        return topics, {}
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return topics, {}
    if isinstance(answer, dict) and isinstance(answer.get("topics"), list):
        granted = {t for t in answer["topics"] if isinstance(t, str)}
        return [t for t in topics if t in granted], _denied(topics, granted)
    return topics, {}


def _denied(topics: Iterable[str], granted: set[str]) -> dict[str, list[str]]:
    refused = [t for t in topics if t not in granted]
    return {"not authorized": refused} if refused else {}
