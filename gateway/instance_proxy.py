"""Forwarding requests to a user's instance through the slurm_bridge ingress, streamed both ways.

An instance is reached only through the ingress, with its bearer token, in one of two ways:

* forwarded: ``<method> <UserInstance.status.endpoint><path>``; the bridge forwards the request
  and splices large bodies. Downloads and large upload chunks go this way.
* through a tunnel to the instance (``tunnel_connector``), kept alive and reused; the bridge
  relays bytes without parsing HTTP. Core's calls and small upload chunks go this way: they are
  many, and a browse of 100 entries should cost little more than the instance's own work.

Bodies are never held whole: the request streams from the caller into the ingress and the
answer streams back, so a 2 GiB upload or download costs the gateway a few buffers of memory.

The endpoint comes from the watched UserInstances (``Instances.get``), so a forward reads
nothing from the apiserver. Two outcomes besides an answer matter to callers and are told apart here:

* ``InstanceNotReadyError``: no Ready instance, or the bridge answered that it is not
  running (its 503 with ``Retry-After``). Core's calls answer 449 so that Core runs
  ``integration/init``; the browser's transfers wake the instance and wait.
* ``InstanceUnreachableError``: the bridge could not be reached, broke the connection or
  refused our token; the message says which.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

import aiohttp
from aiohttp import web
from aiohttp.payload import Payload
from multidict import CIMultiDict
from prometheus_client import Counter
from pydantic import SecretStr
from yarl import URL

from ucim.common.instance_api import CHUNKED_OFFSET_HEADER
from ucim.common.proxy_bodies import BROKEN, pass_back
from ucim.common.web_sessions import WEB_CONNECT_PATH
from ucim.gateway.errors import ProviderError
from ucim.gateway.instances import Instances
from ucim.gateway.tunnel_connector import ConnectRefusedError, TunnelConnector, TunnelRefusedError

# The instance's answer headers a caller may see; everything else (hop-by-hop, Server, ...) stays behind.
ANSWER_HEADERS: Final = (
    "Content-Type",
    "Content-Length",
    "Content-Encoding",
    "Content-Range",
    "Content-Disposition",
    "Accept-Ranges",
    "ETag",
    "Last-Modified",
    "Cache-Control",
    "Access-Control-Allow-Origin",
    "Retry-After",
    CHUNKED_OFFSET_HEADER,
)
Body = AsyncIterable[bytes] | bytes | Payload | None  # a request body as aiohttp's client takes it
# An endpoint that refused a tunnel (an older bridge, a proxy that drops Upgrade) is not asked again for this long.
UNTUNNELED_SECONDS: Final = 300.0
KEEPALIVE_SECONDS: Final = 30.0  # silence after which a kept-alive connection (or tunnel) to the bridge is closed


class InstanceNotReadyError(Exception):
    """The user's instance cannot serve now (none, not Ready, or stopped); the message says which."""


class InstanceUnreachableError(Exception):
    """The bridge ingress could not be reached or did not answer properly; the message says why."""


def bridge_refusal(username: str, status: int, headers: Mapping[str, str]) -> Exception | None:
    """The error for an answer of the ingress itself, or None for an answer of the instance.

    The ingress refuses our token with its own challenge (an instance never sends it), and says that
    an instance is not running with a 503 that asks to come back (an instance's own 503 does not).
    """
    if status == 503 and "Retry-After" in headers:
        return InstanceNotReadyError(f"the instance of {username} is not running")
    if status == 401 and "ucim-bridge" in headers.get("WWW-Authenticate", ""):
        return InstanceUnreachableError("the bridge refused the gateway's ingress token (UCIM_GATEWAY_INGRESS_TOKEN)")
    return None


@dataclass(frozen=True)
class JobServer:
    """A job's web or VNC server on ``node:port``, reached through ``username``'s instance."""

    username: str
    node: str
    port: int


class InstanceProxy:
    """Finds a user's instance and forwards requests to it; its client sessions live as long as the application."""

    def __init__(
        self,
        instances: Instances,
        ingress_token: SecretStr,
        *,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        """Call from a coroutine (it opens client sessions); ``close`` them when done."""
        self.instances = instances
        self._authorization = f"Bearer {ingress_token.get_secret_value()}"
        self._untunneled: dict[str, float] = {}  # endpoint -> until when its calls go the plain way
        # No total timeout (a transfer may take hours), bounded silence.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        self._session = _session(aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_SECONDS), timeout)
        self._tunnels = TunnelConnector(self._authorization, keepalive_timeout=KEEPALIVE_SECONDS)
        self._tunnel_session = _session(self._tunnels, timeout)

    async def close(self) -> None:
        await self._session.close()
        await self._tunnel_session.close()

    # --- where the instance is ---

    async def endpoint(self, username: str) -> str:
        """The endpoint of the user's Ready instance, or InstanceNotReadyError."""
        instance = await self.instances.get(username)
        if instance is None:
            raise InstanceNotReadyError(f"{username} has no instance")
        if not self.instances.ready(instance) or not instance.status.endpoint:
            raise InstanceNotReadyError(f"the instance of {username} is not ready")
        return instance.status.endpoint.rstrip("/")

    # --- forwarding ---

    async def send(
        self,
        username: str,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        body: Body = None,
        tunnel: bool = False,
    ) -> aiohttp.ClientResponse:
        """Send one request to the user's instance; the caller reads and releases the answer.

        ``tunnel``: through a kept-alive tunnel (for small requests with small answers), else
        forwarded by the ingress (which splices large bodies both ways). The bridge's own
        refusals never reach the caller: they raise InstanceNotReadyError or
        InstanceUnreachableError, and the cached endpoint is forgotten. A bridge that answers
        the upgrade with anything but 101 or those refusals (an older bridge, or a proxy in
        front of it that drops ``Upgrade``) gets the request forwarded, and so do the requests
        to that endpoint for the next UNTUNNELED_SECONDS.
        """
        endpoint = await self.endpoint(username)
        if tunnel and self._untunneled.get(endpoint, 0.0) <= time.monotonic():
            url = self._tunnels.base_url(endpoint).with_path(path)
            try:
                # No token: it opened the tunnel, and the instance never sees it.
                return await self._request(
                    username, self._tunnel_session, method, url, _outgoing(headers), params=params, body=body
                )
            except TunnelRefusedError as refused:
                error = bridge_refusal(username, refused.status, refused.headers)
                if error is not None:
                    raise error from refused
                self._untunneled[endpoint] = time.monotonic() + UNTUNNELED_SECONDS
        outgoing = _outgoing(headers, self._authorization)
        response = await self._request(
            username, self._session, method, URL(endpoint + path), outgoing, params=params, body=body
        )
        error = bridge_refusal(username, response.status, response.headers)
        if error is not None:
            response.release()
            raise error
        return response

    async def websocket(
        self, username: str, path: str, params: Mapping[str, str], *, heartbeat: float, max_msg_size: int = 4 << 20
    ) -> aiohttp.ClientWebSocketResponse:
        """A websocket to the user's instance, through a tunnel (a long-lived byte stream both ways).

        The instance's refusal of the upgrade raises ``aiohttp.WSServerHandshakeError`` with its
        status; the bridge's, InstanceNotReadyError or InstanceUnreachableError. ``heartbeat``
        pings keep the tunnel's bytes flowing, which the bridge counts as the instance's activity.
        """
        endpoint = await self.endpoint(username)
        url = self._tunnels.base_url(endpoint).with_path(path).with_query(dict(params))
        try:
            return await self._tunnel_session.ws_connect(url, heartbeat=heartbeat, max_msg_size=max_msg_size)
        except aiohttp.WSServerHandshakeError:
            raise
        except TunnelRefusedError as refused:
            error = bridge_refusal(username, refused.status, refused.headers)
            raise error or InstanceUnreachableError(str(refused)) from refused
        except (aiohttp.ClientError, TimeoutError) as error:
            reason = str(error) or type(error).__name__
            raise InstanceUnreachableError(f"the instance of {username} is unreachable: {reason}") from error

    # --- a job's server, through the instance ---

    async def to_job_server(
        self, server: JobServer, method: str, path_qs: str, *, headers: Mapping[str, str], body: Body
    ) -> aiohttp.ClientResponse:
        """Send a request to a job's server, connected to by its user's instance (as the user).

        Connections are tunnels to the instance and on from there (``TunnelConnector.base_url``'s ``then``),
        kept alive per server. ConnectRefusedError: the instance could not connect (its ``why``).
        """
        url = URL(str(await self._job_server_url(server)) + path_qs, encoded=True)
        try:
            return await self._tunnel_session.request(method, url, headers=headers, data=body, allow_redirects=False)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise self._unreachable(server.username, error) from error

    async def job_server_websocket(
        self,
        server: JobServer,
        path_qs: str,
        *,
        headers: Mapping[str, str],
        protocols: Iterable[str],
        heartbeat: float,
    ) -> aiohttp.ClientWebSocketResponse:
        """A websocket to a job's server, as ``to_job_server``; its refusal raises WSServerHandshakeError."""
        url = URL(str(await self._job_server_url(server)) + path_qs, encoded=True)
        try:
            return await self._tunnel_session.ws_connect(
                url, headers=headers, protocols=tuple(protocols), max_msg_size=0, heartbeat=heartbeat, compress=0
            )
        except aiohttp.WSServerHandshakeError:
            raise
        except (aiohttp.ClientError, TimeoutError) as error:
            raise self._unreachable(server.username, error) from error

    async def _job_server_url(self, server: JobServer) -> URL:
        then = URL(WEB_CONNECT_PATH).with_query(node=server.node, port=str(server.port))
        return self._tunnels.base_url(await self.endpoint(server.username), str(then))

    def _unreachable(self, username: str, error: BaseException) -> Exception:
        """What a failed call to a job's server raises: the instance's refusal as it is, or why it was not reached."""
        if isinstance(error, ConnectRefusedError):
            return error
        if isinstance(error, TunnelRefusedError):
            return bridge_refusal(username, error.status, error.headers) or InstanceUnreachableError(str(error))
        reason = str(error) or type(error).__name__
        return InstanceUnreachableError(f"the instance of {username} is unreachable: {reason}")

    async def _request(
        self,
        username: str,
        session: aiohttp.ClientSession,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        *,
        params: Mapping[str, str] | None = None,
        body: Body,
    ) -> aiohttp.ClientResponse:
        try:
            return await session.request(method, url, params=params, headers=headers, data=body, allow_redirects=False)
        except TunnelRefusedError:
            raise
        except (aiohttp.ClientError, TimeoutError) as error:
            reason = str(error) or type(error).__name__
            raise InstanceUnreachableError(f"the instance of {username} is unreachable: {reason}") from error


def _outgoing(headers: Mapping[str, str] | None, authorization: str | None = None) -> CIMultiDict[str]:
    outgoing = CIMultiDict(headers or {})
    if authorization is not None:
        outgoing["Authorization"] = authorization
    # Bytes as they are on disk: no compressed answer (nor a ".gz" sibling a file server might pick).
    outgoing["Accept-Encoding"] = "identity"
    return outgoing


def _session(connector: aiohttp.BaseConnector, timeout: aiohttp.ClientTimeout) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
    )


def pick_headers(request: web.Request, names: Iterable[str]) -> dict[str, str]:
    """Those of ``names`` the request carries, and its Content-Length (a streamed body keeps its length)."""
    picked = {name: request.headers[name] for name in names if name in request.headers}
    if request.content_length is not None:
        picked["Content-Length"] = str(request.content_length)
    return picked


async def relay(
    request: web.Request, upstream: aiohttp.ClientResponse, counter: Counter | None = None, *, idle_seconds: float
) -> web.StreamResponse:
    """The instance's answer to the caller: status, the headers in ANSWER_HEADERS, the body (``pass_back``).

    ``counter`` counts the body's bytes; ``idle_seconds`` bounds a splice's silence. An answer that
    breaks before it began is a 502; after, the caller's connection breaks (AnswerBrokenError).
    """
    headers = {name: upstream.headers[name] for name in ANSWER_HEADERS if name in upstream.headers}
    on_sent = counter.inc if counter is not None else None
    try:
        return await pass_back(request, upstream, headers, idle_seconds=idle_seconds, on_sent=on_sent)
    except BROKEN as error:
        raise ProviderError(502, f"the instance's answer broke off: {error}") from error
