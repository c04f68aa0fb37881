"""The bridge ingress: the one authenticated way into the user instances.

``<method> /instances/<UserInstance name>/<path>?<query>`` with
``Authorization: Bearer <ingress token>`` is forwarded to ``<method> /<path>?<query>`` on
that instance's unix socket, body and answer streamed both ways (nothing is held whole
in memory). Answers of the ingress itself use UCloud's error envelope:

* 401: no token, or a wrong one (compared in constant time), whatever the path;
* 404: no instance of that name on this bridge;
* 503 (``Retry-After: 1``): the instance exists but is not running (stopped when idle,
  restarting, ...); the caller asks for it again by touching the UserInstance's
  ``ucim.io/requested-at`` annotation;
* 502: the instance broke the connection.

The token is never forwarded, nor are hop-by-hop headers or ``Host``. Every request
counts as activity of its instance (the idle timer), from its start to its end.

``GET /instances/<name>`` asking to upgrade to ``ucim-instance`` opens a tunnel instead: the
connection then carries the instance's own HTTP (``ucim.common.byte_tunnels``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import ssl
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import Counter
from pydantic import SecretStr
from yarl import URL

from ucim.common import splice
from ucim.common.byte_tunnels import UnreachableError, tunnel, unix_socket, wants_tunnel
from ucim.common.instance_api import TUNNEL_UPGRADE
from ucim.common.protocol import error_body
from ucim.common.proxy_bodies import BROKEN, forwarded_body, pass_back

log = logging.getLogger(__name__)

INGRESS_REQUESTS = Counter("ucim_ingress_requests", "Requests to the bridge ingress, by HTTP status.", ["code"])

PREFIX: Final = "/instances/"
BODY_IDLE_SECONDS: Final = 300.0  # a spliced body that stops this long is cut off (the instance keeps what came)
_HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer",
     "transfer-encoding", "upgrade", "expect"}
)  # fmt: skip
# Never passed on to an instance: the ingress's own credentials and routing.
_NOT_FORWARDED: Final = _HOP_BY_HOP | {"host", "authorization", "content-length"}


@dataclass
class Route:
    """Where one instance listens and whether it runs; also its activity, for the idle timer."""

    name: str
    socket_path: str | None = None
    session: aiohttp.ClientSession | None = None
    in_flight: int = 0
    last_activity: float = field(default_factory=time.monotonic)
    last_activity_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def running(self) -> bool:
        return self.session is not None

    def touch(self) -> None:
        self.last_activity = time.monotonic()
        self.last_activity_at = datetime.now(UTC)


class Routes:
    """The instances the ingress knows: the instance loop writes, the ingress reads."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}

    def get(self, name: str) -> Route | None:
        return self._routes.get(name)

    def ensure(self, name: str) -> Route:
        return self._routes.setdefault(name, Route(name))

    def open(self, name: str, socket_path: str) -> aiohttp.ClientSession:
        """The instance ``name`` serves on ``socket_path`` now; a client session to it."""
        route = self.ensure(name)
        route.socket_path = socket_path
        route.session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=socket_path),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
        )
        route.touch()
        return route.session

    async def close(self, name: str) -> None:
        """The instance stopped: requests get 503 from now on."""
        route = self._routes.get(name)
        if route is not None and route.session is not None:
            session, route.session = route.session, None
            await session.close()

    async def remove(self, name: str) -> None:
        await self.close(name)
        self._routes.pop(name, None)

    async def close_all(self) -> None:
        for name in list(self._routes):
            await self.close(name)


# The ingress app's state. This is the bridge's only aiohttp app, so its keys stay here, next to Routes
# (a keys.py would import this module and be imported by it); the gateway and the instance have keys.py.
ROUTES = web.AppKey("routes", Routes)
TOKEN_DIGEST = web.AppKey("token_digest", bytes)


def _digest(token: str) -> bytes:
    # Comparing digests keeps even the token's length out of the timing.
    return hashlib.sha256(token.encode()).digest()


def error(status: int, why: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(error_body(status, why), status=status, headers=headers)


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    status = 500
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        status = exc.status
        raise
    else:
        status = response.status
    finally:
        INGRESS_REQUESTS.labels(str(status)).inc()
    return response


@web.middleware
async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(_digest(token.strip()), request.app[TOKEN_DIGEST]):
        return error(401, "a valid ingress token is required", {"WWW-Authenticate": 'Bearer realm="ucim-bridge"'})
    return await handler(request)


def _target(request: web.Request) -> URL:
    """The request's path and query on the instance, exactly as the client encoded them."""
    path, _, query = request.raw_path.partition("?")
    _, _, rest = path.removeprefix(PREFIX).partition("/")
    return URL.build(scheme="http", host="instance", path="/" + rest, query_string=query, encoded=True)


def _forwarded_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _NOT_FORWARDED)


async def forward(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    route = request.app[ROUTES].get(name)
    if route is None:
        return error(404, f"there is no instance {name!r} on this bridge")
    session = route.session
    if session is None or route.socket_path is None:
        return _not_running(name)
    if wants_tunnel(request, TUNNEL_UPGRADE) and "tail" not in request.match_info:
        return await _tunnel_to(request, route.socket_path, route)
    headers = _forwarded_headers(request.headers)
    if request.content_length is not None:
        headers["Content-Length"] = str(request.content_length)
    route.in_flight += 1
    route.touch()
    try:
        async with session.request(
            request.method,
            _target(request),
            headers=headers,
            data=await forwarded_body(request, BODY_IDLE_SECONDS),
            allow_redirects=False,
        ) as upstream:
            passed = CIMultiDict((k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP)
            return await pass_back(request, upstream, passed, idle_seconds=BODY_IDLE_SECONDS)
    except BROKEN as exc:
        if isinstance(exc, aiohttp.ClientConnectorError):
            return _not_running(name)
        log.warning("instance broke the connection", extra={"instance": name, "error": str(exc)})
        return error(502, f"instance {name!r} did not answer properly")
    finally:
        route.in_flight -= 1
        route.touch()


async def _tunnel_to(request: web.Request, socket_path: str, route: Route) -> web.StreamResponse:
    try:
        return await tunnel(request, unix_socket(socket_path), TUNNEL_UPGRADE, route.touch)
    except UnreachableError:
        return _not_running(route.name)


def _not_running(name: str) -> web.Response:
    return error(503, f"instance {name!r} is not running", {"Retry-After": "1"})


def init_app(routes: Routes, token: SecretStr) -> web.Application:
    """The ingress application; every route requires the token."""
    app = web.Application(middlewares=[count_requests, require_token])
    splice.enable(app)
    app[ROUTES] = routes
    app[TOKEN_DIGEST] = _digest(token.get_secret_value())
    app.router.add_route("*", "/instances/{name}", forward)
    app.router.add_route("*", "/instances/{name}/{tail:.*}", forward)
    return app


async def start_ingress(
    routes: Routes,
    token: SecretStr,
    *,
    host: str,
    port: int,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> web.AppRunner:
    """Serve the ingress in the running loop; the caller cleans the runner up."""
    context = None
    if tls_cert and tls_key:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls_cert, tls_key)
    runner = web.AppRunner(init_app(routes, token), access_log=None, shutdown_timeout=5)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=context).start()
    log.info("ingress listening", extra={"host": host, "port": port, "tls": context is not None})
    return runner
