"""Web interfaces and remote desktops of jobs: Core's WEB and VNC sessions, ``authorize-app``, and the proxy.

* ``interactiveSession`` WEB: the owner's instance finds the node of the rank and grants a one-time
  token; Core sends the browser to ``https://<prefix><job>-<rank>[-<target>]<suffix>/ucloud/<P>/
  authorize-app?token=<t>`` (``web_hosts``).
* ``authorize-app`` on that host redeems the token at the owner's instance (once) and answers
  ``302 /`` with a session cookie for that host: a JWT (``web_tokens``) that names the owner and
  where the interface is served.
* Every other request to that host is the job's: with a valid cookie for this host, of the job's
  owner, while the job runs, it goes to the job's server on ``node:port`` as it is (method, path,
  Host, headers, streamed bodies; websockets relayed frame by frame), through a tunnel to the owner's
  instance, which connects on as its user (``InstanceProxy.to_job_server``). Without one: 403;
  a host that names no running job: 404.
* ``interactiveSession`` VNC answers ``<public_url>/ucloud/<P>/vnc?token=<jwt>``: the websocket
  there is relayed to ``/websockify`` on the job's port, as IM2's Envoy route does. The token is
  reusable until it expires or the job ends, as noVNC reconnects with the same URL.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final, Literal, TypeVar

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict
from yarl import URL

from ucim.common.proxy_bodies import BROKEN, forwarded_body, pass_back
from ucim.common.resources import JobInterface, UCloudJob
from ucim.common.shell_protocol import InteractiveSessionItem
from ucim.common.web_sessions import (
    WEB_CLAIMS_PATH,
    WEB_GRANTS_PATH,
    VncSession,
    WebClaim,
    WebGrant,
    WebGrantRequest,
    WebSession,
    WebTarget,
    is_web_token,
)
from ucim.gateway.errors import ProviderError
from ucim.gateway.instance_proxy import InstanceNotReadyError, InstanceUnreachableError, JobServer
from ucim.gateway.keys import INTERACTIVE_JOBS, PROXY, PUBLIC_APP, SETTINGS, TOKEN_PATHS, WEB_HOSTS, WEB_TOKENS
from ucim.gateway.metrics import PROXIED_BYTES
from ucim.gateway.sessions import RunningJob, ask_instance
from ucim.gateway.sockets import tracked
from ucim.gateway.transfers import wake
from ucim.gateway.tunnel_connector import ConnectRefusedError
from ucim.gateway.web_hosts import WebHost, WebHosts, hostname_safe
from ucim.gateway.web_tokens import Kind, SessionClaims, WebTokens
from ucim.gateway.ws_relay import relay_frames

log = logging.getLogger(__name__)
R = TypeVar("R")

UNKNOWN_APP: Final = "Unknown application requested. Please try again!"  # IM2's words
NO_SESSION: Final = "no session for this application here: open it from UCloud (the job's page)"
COOKIE_PREFIX: Final = "ucloud-compute-session-"
VNC_PATH: Final = "/websockify"  # where the job's websockify serves (IM2's Envoy route rewrites to it)
# Pings both ways on a relayed websocket: an idle desktop or notebook is not cut by a proxy's idle timeout
# (ingress-nginx: 60 s), and the bytes through the tunnel keep the owner's instance counted as active.
HEARTBEAT_SECONDS: Final = 30.0
# Answers up to this size are read whole and sent in one write (streaming them cost three writes each).
SMALL_ANSWER_BYTES: Final = 64 * 1024
# Hop-by-hop headers (RFC 9110 §7.6.1) and those aiohttp's client makes itself for a websocket.
_HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer",
     "transfer-encoding", "upgrade"}
)  # fmt: skip
_WEBSOCKET_OWN: Final = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol"}
)


# --- Core's calls ------------------------------------------------------------------


def _hosts(request: web.Request) -> WebHosts:
    hosts = request.config_dict[WEB_HOSTS]
    if hosts is None:
        raise ProviderError(400, "web access is not supported by this provider (not configured)")
    return hosts


def _tokens(request: web.Request, status: int = 404) -> WebTokens:
    """The session tokens' signer; without one, ``status`` (400 to Core, 404 to a browser)."""
    tokens = request.config_dict[WEB_TOKENS]
    if tokens is None:
        raise ProviderError(status, "web and VNC access is not supported by this provider (not configured)")
    return tokens


def interface_of(job: RunningJob, kind: str, rank: int, target: str | None) -> JobInterface:
    """The job's interface Core asks for: the application's own, or a ``dynamicInterface`` target of ``rank``."""
    for interface in job.job.status.interfaces:
        if interface.type != kind:
            continue
        if target is None and interface.target is None:
            return interface
        if target is not None and interface.target == target and interface.rank == rank:
            return interface
    job_id = job.job.spec.job_id
    if target is None:
        raise ProviderError(400, f"job {job_id} has no {kind.lower()} interface (its application is not a {kind} one)")
    raise ProviderError(400, f"job {job_id} has no {kind.lower()} target {target[:100]!r} on rank {rank}")


async def grant(
    request: web.Request, username: str, job: RunningJob, item: InteractiveSessionItem, port: int
) -> WebGrant:
    body = WebGrantRequest(
        job_id=job.job.spec.job_id,
        slurm_job_id=job.slurm_job_id,
        node_list=job.node_list,
        rank=item.rank,
        target=item.target,
        port=port,
    )
    return await ask_instance(request, username, WEB_GRANTS_PATH, body, WebGrant)


def public_origin(request: web.Request, host: str) -> str:
    """``host`` with the scheme and port browsers reach the gateway with (``public_url``)."""
    url = URL(request.config_dict[SETTINGS].public_url)
    port = "" if url.is_default_port() or url.explicit_port is None else f":{url.explicit_port}"
    return f"{url.scheme}://{host}{port}"


async def web_session(request: web.Request, username: str, job: RunningJob, item: InteractiveSessionItem) -> WebSession:
    hosts = _hosts(request)
    interface = interface_of(job, "WEB", item.rank, item.target)
    token = (await grant(request, username, job, item, interface.port)).token
    host = hosts.host(job.job.spec.job_id, item.rank, item.target)
    provider = request.config_dict[SETTINGS].provider_id
    url = f"{public_origin(request, host)}/ucloud/{provider}/authorize-app?token={token}"
    return WebSession(job_id=item.job.id, rank=item.rank, redirect_client_to=url)


async def vnc_session(request: web.Request, username: str, job: RunningJob, item: InteractiveSessionItem) -> VncSession:
    tokens = _tokens(request, 400)
    settings = request.config_dict[SETTINGS]
    interface = interface_of(job, "VNC", item.rank, item.target)
    node = (await grant(request, username, job, item, interface.port)).node
    target = WebTarget(job_id=job.job.spec.job_id, rank=item.rank, target=item.target, node=node, port=interface.port)
    token, _expires = tokens.make("vnc", username, target, settings.web_session_seconds)
    url = f"{settings.public_url.rstrip('/')}/ucloud/{settings.provider_id}/vnc?token={token}"
    return VncSession(job_id=item.job.id, url=url, password=_vnc_password(item) or None)


def _vnc_password(item: InteractiveSessionItem) -> str:
    application = item.job.status.resolved_application
    vnc = application.invocation.vnc if application is not None else None
    return vnc.password if vnc is not None else ""


# --- the interfaces' hosts -------------------------------------------------------------


def _host(request: web.Request) -> WebHost:
    hosts = request.config_dict[WEB_HOSTS]
    found = hosts.parse(request.host) if hosts is not None else None
    if found is None:
        raise ProviderError(404, f"no application is served at {request.host[:200]!r}")
    return found


def _running(request: web.Request, job_id: str) -> UCloudJob | None:
    return request.config_dict[INTERACTIVE_JOBS].running(job_id)


async def authorize_app(request: web.Request) -> web.Response:
    """The one-time token for the host's interface, redeemed at the owner's instance for a cookie."""
    host = _host(request)
    token = request.query.get("token", "")
    job = _running(request, host.job_id)
    if job is None or not is_web_token(token):
        raise ProviderError(404, UNKNOWN_APP)
    try:
        target = await ask_instance(request, job.spec.owner, WEB_CLAIMS_PATH, WebClaim(token=token), WebTarget)
    except ProviderError as error:
        if error.status != 449:
            raise
        raise ProviderError(404, UNKNOWN_APP) from error  # tokens live in the instance, which has stopped since
    if not _serves(host, target):
        raise ProviderError(404, UNKNOWN_APP)  # a token of another interface of the owner's
    settings = request.config_dict[SETTINGS]
    cookie, _expires = _tokens(request).make("web", job.spec.owner, target, settings.web_session_seconds)
    log.info("web interface opened", extra=_about(job.spec.owner, target))
    response = web.HTTPFound("/")
    secure = settings.public_scheme == "https"
    response.set_cookie(
        host.cookie_name, cookie, path="/", max_age=settings.web_session_seconds, httponly=True, secure=secure,
        samesite="Lax",
    )  # fmt: skip
    raise response


def _serves(host: WebHost, target: WebTarget) -> bool:
    """Whether ``target`` is the interface ``host`` names."""
    target_part = None if target.target is None else hostname_safe(target.target)
    return (target.job_id, target.rank, target_part) == (host.job_id, host.rank, host.target)


def _session(request: web.Request, kind: Kind, token: str | None, host: WebHost | None) -> SessionClaims:
    """The session a cookie or VNC token stands for, checked against the running job; 403/404 otherwise."""
    claims = _tokens(request).check(kind, token) if token else None
    if claims is None or (host is not None and not _serves(host, claims.target)):
        raise ProviderError(403, NO_SESSION if token is None else "this session is not valid here, or has expired")
    job = _running(request, claims.target.job_id)
    if job is None:
        raise ProviderError(404, f"job {claims.target.job_id} is not running: its application is gone")
    if job.spec.owner != claims.user:
        raise ProviderError(403, "this session is not the job owner's")
    return claims


async def serve(request: web.Request) -> web.StreamResponse:
    """A request to a job's interface, passed on to the job's server."""
    host = _host(request)
    claims = _session(request, "web", request.cookies.get(host.cookie_name), host)
    server = JobServer(claims.user, claims.target.node, claims.target.port)
    if _is_websocket(request):
        return await relay_websocket(request, server, request.raw_path, "web")
    headers = _forwarded(request)
    body = await forwarded_body(request, request.config_dict[SETTINGS].instance_read_timeout_seconds)
    proxy = request.config_dict[PROXY]
    upstream = await _with_instance(
        request,
        server,
        lambda: proxy.to_job_server(server, request.method, request.raw_path, headers=headers, body=body),
    )
    if request.content_length:
        PROXIED_BYTES.labels("web", "up").inc(request.content_length)
    answer = CIMultiDict((k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP)
    try:
        if _is_small(request, upstream):  # a page's script or style: in one write, headers and all
            whole = await upstream.read()
            PROXIED_BYTES.labels("web", "down").inc(len(whole))
            return web.Response(status=upstream.status, reason=upstream.reason, body=whole, headers=answer)
        return await pass_back(
            request, upstream, answer, idle_seconds=request.config_dict[SETTINGS].instance_read_timeout_seconds,
            on_sent=PROXIED_BYTES.labels("web", "down").inc,
        )  # fmt: skip
    except BROKEN as error:
        raise ProviderError(502, f"the application's answer broke off: {error}") from error


async def _with_instance(request: web.Request, server: JobServer, call: Callable[[], Awaitable[R]]) -> R:
    """``call``, after waking the owner's instance if it stopped while idle; the job server's refusal as a 502."""
    try:
        try:
            return await call()
        except InstanceNotReadyError:
            await wake(request, server.username)
            return await call()
    except ConnectRefusedError as error:
        raise ProviderError(502, error.why) from error
    except InstanceNotReadyError as error:
        raise ProviderError(503, f"{error}; try again shortly") from error
    except InstanceUnreachableError as error:
        raise ProviderError(502, str(error)) from error


def _is_small(request: web.Request, upstream: aiohttp.ClientResponse) -> bool:
    """An answer with a body of a known, small length (a streamed one goes on as it comes)."""
    length = upstream.content_length
    has_body = request.method != "HEAD" and upstream.status not in (204, 304)
    return has_body and length is not None and length <= SMALL_ANSWER_BYTES


def _is_websocket(request: web.Request) -> bool:
    return request.method == "GET" and request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"


def _forwarded(request: web.Request, *, websocket: bool = False) -> CIMultiDict[str]:
    """The request's headers for the job's server: end-to-end ones, without the session cookie, plus X-Forwarded-*."""
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        lower = name.lower()
        if lower in _HOP_BY_HOP or (websocket and lower in _WEBSOCKET_OWN):
            continue
        if lower == "cookie":
            others = "; ".join(c for c in value.split("; ") if not c.lstrip().startswith(COOKIE_PREFIX))
            if others:
                headers.add(name, others)
            continue
        headers.add(name, value)
    peer = request.remote or ""
    prior = request.headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    headers["X-Forwarded-Proto"] = request.config_dict[SETTINGS].public_scheme
    headers["X-Forwarded-Host"] = request.host
    return headers


async def relay_websocket(
    request: web.Request, server: JobServer, path_qs: str, kind: Literal["web", "vnc"]
) -> web.StreamResponse:
    """The browser's websocket, relayed frame by frame to the job server's at ``path_qs``."""
    offered = [p.strip() for p in request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "").split(",") if p.strip()]
    headers = _forwarded(request, websocket=True)
    proxy = request.config_dict[PROXY]

    async def connect() -> aiohttp.ClientWebSocketResponse:
        return await proxy.job_server_websocket(
            server, path_qs, headers=headers, protocols=offered, heartbeat=HEARTBEAT_SECONDS
        )

    try:
        upstream = await _with_instance(request, server, connect)
    except aiohttp.WSServerHandshakeError as error:
        status = error.status if 400 <= error.status < 500 else 502
        raise ProviderError(status, f"the application refused the websocket ({error.status})") from error
    protocols = (upstream.protocol,) if upstream.protocol else ()
    browser = web.WebSocketResponse(protocols=protocols, max_msg_size=0, heartbeat=HEARTBEAT_SECONDS)
    try:
        async with tracked(request, browser, kind):
            await browser.prepare(request)
            await relay_frames(browser, upstream, lambda way, size: PROXIED_BYTES.labels(kind, way).inc(size))
    finally:
        await upstream.close()
        await browser.close()
    return browser


async def vnc_socket(request: web.Request) -> web.StreamResponse:
    """noVNC's websocket (``/ucloud/<P>/vnc?token=``), relayed to the job's websockify."""
    claims = _session(request, "vnc", request.query.get("token") or None, None)
    if not _is_websocket(request):
        raise ProviderError(400, "a VNC session is a websocket: open it with noVNC")
    server = JobServer(claims.user, claims.target.node, claims.target.port)
    log.info("remote desktop opened", extra=_about(claims.user, claims.target))
    return await relay_websocket(request, server, VNC_PATH, "vnc")


def _about(user: str, target: WebTarget) -> dict[str, object]:
    """A session's log fields."""
    return {"ucloud_user": user, "job_id": target.job_id, "rank": target.rank, "target": target.target,
            "node": target.node, "port": target.port}  # fmt: skip


# --- wiring ----------------------------------------------------------------------------


def setup_web_routes(app: web.Application, base: str) -> None:
    """The interfaces' hosts (before every other route: their paths are the jobs') and the VNC socket."""
    settings = app[SETTINGS]
    key = settings.web_session_key.get_secret_value().encode()
    app[WEB_TOKENS] = WebTokens(key, settings.provider_id) if settings.vnc_enabled else None
    hosts = app[WEB_HOSTS] = (
        WebHosts(settings.web_prefix, settings.web_suffix)
        if settings.web_interfaces_enabled and settings.web_suffix is not None
        else None
    )
    if hosts is not None:
        interfaces = web.Application()
        interfaces[PUBLIC_APP] = True
        interfaces.router.add_get(f"{base}/authorize-app", authorize_app)
        interfaces.router.add_route("*", "/{tail:.*}", serve)
        app.add_domain(hosts.mask, interfaces)
    vnc = f"{base}/vnc"
    app.router.add_get(vnc, vnc_socket)
    app[TOKEN_PATHS] = app.get(TOKEN_PATHS, frozenset()) | {vnc}
