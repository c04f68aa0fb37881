"""Forwarding requests to a user's instance through the slurm_bridge ingress, streamed both ways.

An instance is reached only at ``<UserInstance.status.endpoint><path>`` with the ingress
bearer token. Bodies are never held whole: the request streams from the caller into the
ingress and the answer streams back, so a 2 GiB upload or download costs the gateway a
few buffers of memory.

Each forward would otherwise need a Kubernetes GET to find the endpoint; the endpoint of a
Ready instance is kept for ``cache_seconds`` instead, and forgotten as soon as a forward
fails. Two outcomes besides an answer matter to callers and are told apart here:

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

from ucim.common.conditions import is_true
from ucim.common.instance_api import CHUNKED_OFFSET_HEADER
from ucim.common.proxy_bodies import BROKEN, pass_back
from ucim.common.reasons import READY
from ucim.gateway.errors import ProviderError
from ucim.gateway.instances import Instances

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


class InstanceNotReadyError(Exception):
    """The user's instance cannot serve now (none, not Ready, or stopped); the message says which."""


class InstanceUnreachableError(Exception):
    """The bridge ingress could not be reached or did not answer properly; the message says why."""


@dataclass
class _Cached:
    endpoint: str
    until: float


def bridge_token_refused(response: aiohttp.ClientResponse) -> bool:
    """The ingress itself refused our token (an instance never answers with its challenge)."""
    return response.status == 401 and "ucim-bridge" in response.headers.get("WWW-Authenticate", "")


def bridge_not_running(response: aiohttp.ClientResponse) -> bool:
    """The ingress's "instance is not running": a 503 that asks to come back (an instance's own 503 does not)."""
    return response.status == 503 and "Retry-After" in response.headers


class InstanceProxy:
    """Finds a user's instance and forwards requests to it; one client session for the application."""

    def __init__(
        self,
        instances: Instances,
        ingress_token: SecretStr,
        session: aiohttp.ClientSession,
        *,
        cache_seconds: float = 5.0,
    ) -> None:
        self.instances = instances
        self._authorization = f"Bearer {ingress_token.get_secret_value()}"
        self._session = session
        self._cache_seconds = cache_seconds
        self._endpoints: dict[str, _Cached] = {}

    @staticmethod
    def new_session(connect_timeout: float, read_timeout: float) -> aiohttp.ClientSession:
        """The session forwards go through: no total timeout (a transfer may take hours), bounded silence."""
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    # --- where the instance is ---

    async def endpoint(self, username: str) -> str:
        """The endpoint of the user's Ready instance (cached), or InstanceNotReadyError."""
        cached = self._endpoints.get(username)
        now = time.monotonic()
        if cached is not None and cached.until > now:
            return cached.endpoint
        instance = await self.instances.get(username)
        if instance is None:
            raise InstanceNotReadyError(f"{username} has no instance")
        if not is_true(instance.status.conditions, READY) or not instance.status.endpoint:
            raise InstanceNotReadyError(f"the instance of {username} is not ready")
        endpoint = instance.status.endpoint.rstrip("/")
        if self._cache_seconds > 0:
            self._endpoints[username] = _Cached(endpoint, now + self._cache_seconds)
        return endpoint

    def forget(self, username: str) -> None:
        self._endpoints.pop(username, None)

    # --- forwarding ---

    async def send(
        self,
        username: str,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        body: AsyncIterable[bytes] | bytes | Payload | None = None,
    ) -> aiohttp.ClientResponse:
        """Send one request to the user's instance; the caller reads and releases the answer.

        The bridge's own refusals never reach the caller: they raise InstanceNotReadyError or
        InstanceUnreachableError, and the cached endpoint is forgotten.
        """
        endpoint = await self.endpoint(username)
        outgoing = CIMultiDict(headers or {})
        outgoing["Authorization"] = self._authorization
        # Bytes as they are on disk: no compressed answer (nor a ".gz" sibling a file server might pick).
        outgoing["Accept-Encoding"] = "identity"
        try:
            response = await self._session.request(
                method,
                endpoint + path,
                params=params,
                headers=outgoing,
                data=body,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, TimeoutError) as error:
            self.forget(username)
            reason = str(error) or type(error).__name__
            raise InstanceUnreachableError(f"the instance of {username} is unreachable: {reason}") from error
        if bridge_not_running(response):
            response.release()
            self.forget(username)
            raise InstanceNotReadyError(f"the instance of {username} is not running")
        if bridge_token_refused(response):
            response.release()
            self.forget(username)
            raise InstanceUnreachableError(
                "the bridge refused the gateway's ingress token (UCIM_GATEWAY_INGRESS_TOKEN)"
            )
        return response


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
