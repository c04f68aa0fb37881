"""An aiohttp connector whose connections are tunnels through the bridge ingress to user instances.

A tunnel (``ucim.common.byte_tunnels``) is a connection to the ingress upgraded to carry one
instance's own HTTP: ``GET <UserInstance.status.endpoint>`` with ``Upgrade: ucim-instance`` and the
ingress token, answered ``101``. Requests then go to the instance as they are, kept alive, and the
bridge relays bytes without parsing them. Core's small calls take this way: on a 2-core VM a
relayed hop adds about a quarter of what an HTTP hop through aiohttp adds.

aiohttp pools connections by host, so each instance gets a host of its own: ``base_url(endpoint)``
names a made-up host that stands for that endpoint, and connections opened for it are tunnels to
that instance and to no other. ``BaseConnector._create_connection`` is the hook aiohttp's own
connectors implement; it is not public API, which is why this module is small and tested against
every aiohttp it runs with.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from typing import Final

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest
from aiohttp.tracing import Trace
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ucim.common.instance_api import TUNNEL_UPGRADE
from ucim.common.protocol import why_of
from ucim.common.request_ids import request_id_headers
from ucim.common.web_sessions import TCP_UPGRADE

MAX_HEAD_BYTES: Final = 16 * 1024  # the ingress's answer to an upgrade is a few hundred bytes


class TunnelRefusedError(aiohttp.ClientConnectionError):
    """The ingress answered the upgrade with something else than 101; its status and headers tell why."""

    def __init__(self, status: int, headers: CIMultiDictProxy[str], who: str = "the bridge ingress") -> None:
        super().__init__(f"{who} answered the tunnel with {status}")
        self.status = status
        self.headers = headers


class ConnectRefusedError(TunnelRefusedError):
    """The instance did not connect to the job's server (``then``): its status and ``why``."""

    def __init__(self, status: int, headers: CIMultiDictProxy[str], why: str) -> None:
        super().__init__(status, headers, "the instance")
        self.why = why


class _Head:
    """The status and headers of the ingress's answer."""

    def __init__(self, raw: bytes) -> None:
        status_line, *lines = raw.decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise aiohttp.ClientConnectionError(f"the bridge ingress did not answer in HTTP: {status_line[:80]!r}")
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines:
            name, colon, value = line.partition(":")
            if colon:
                headers.add(name.strip(), value.strip())
        self.status = int(code)
        self.headers = CIMultiDictProxy(headers)


class _Handshake(asyncio.Protocol):
    """Reads the head of the ingress's answer; whatever follows it belongs to the tunnel."""

    def __init__(self) -> None:
        self.head: asyncio.Future[_Head] = asyncio.get_running_loop().create_future()
        self.rest = b""
        self._buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        if self.head.done():
            self.rest += data
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                self.head.set_exception(aiohttp.ClientConnectionError("the bridge ingress's answer head is too long"))
            return
        try:
            self.head.set_result(_Head(bytes(self._buffer[:end])))
        except aiohttp.ClientConnectionError as error:
            self.head.set_exception(error)
        self.rest = bytes(self._buffer[end + 4 :])
        self._buffer.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self.head.set_exception(aiohttp.ServerDisconnectedError("the bridge ingress closed the tunnel unanswered"))


def _upgrade_request(endpoint: URL, authorization: str) -> bytes:
    host = endpoint.raw_host or ""
    if not endpoint.is_default_port():
        host = f"{host}:{endpoint.port}"
    lines = (
        f"GET {endpoint.raw_path_qs} HTTP/1.1",
        f"Host: {host}",
        f"Authorization: {authorization}",
        "Connection: Upgrade",
        f"Upgrade: {TUNNEL_UPGRADE}",
    )
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _connect_request(then: str) -> bytes:
    """The upgrade the instance answers by connecting to a job's server (``WEB_CONNECT_PATH``)."""
    # The id of the request that opened this connection: the instance audits the connection under it.
    lines = (
        f"GET {then} HTTP/1.1",
        "Host: instance",
        "Connection: Upgrade",
        f"Upgrade: {TCP_UPGRADE}",
        *(f"{name}: {value}" for name, value in request_id_headers().items()),
    )
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _connected(transport: asyncio.Transport, handshake: _Handshake, then: str) -> _Handshake:
    """Ask the instance at the tunnel's end to connect on (``then``); its handshake, whose ``rest`` is the server's."""
    onward = _Handshake()
    transport.set_protocol(onward)
    transport.write(_connect_request(then))
    if handshake.rest:
        onward.data_received(handshake.rest)
    head = await onward.head
    if head.status != 101 or head.headers.get("Upgrade", "").lower() != TCP_UPGRADE:
        # The instance's refusal is small JSON ({"why": …}); it may not all be here yet, but its head is.
        why = why_of(onward.rest) or f"the instance did not connect to the job's server ({head.status})"
        raise ConnectRefusedError(head.status, head.headers, why)
    return onward


class TunnelConnector(aiohttp.BaseConnector):
    """Opens and pools tunnels; a request's host (from ``base_url``) says which instance it is for."""

    def __init__(
        self,
        authorization: str,
        *,
        keepalive_timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(keepalive_timeout=keepalive_timeout, limit=0)
        self._authorization = authorization
        self._ssl_context = ssl_context or ssl.create_default_context()
        self._endpoints: dict[str, tuple[URL, str | None]] = {}

    def base_url(self, endpoint: str, then: str | None = None) -> URL:
        """The URL that requests to the instance at ``endpoint`` are sent to; its host is that tunnel's pool.

        ``then``: an instance path that connects on (``WEB_CONNECT_PATH?node=…&port=…``): requests to
        this URL then reach that job server, through a tunnel to the instance and the instance's own.
        """
        key = endpoint if then is None else f"{endpoint} {then}"
        host = "t" + hashlib.blake2b(key.encode(), digest_size=12).hexdigest()  # a valid DNS label
        self._endpoints.setdefault(host, (URL(endpoint), then))
        return URL.build(scheme="http", host=host)

    async def _create_connection(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 (aiohttp's signature)
    ) -> ResponseHandler:
        found = self._endpoints.get(req.url.raw_host or "")
        if found is None:
            raise aiohttp.InvalidURL(req.url, "not a tunnel's URL: use TunnelConnector.base_url")
        endpoint, then = found
        host, port = endpoint.raw_host, endpoint.port
        if host is None or port is None or endpoint.scheme not in ("http", "https"):
            raise aiohttp.InvalidURL(endpoint, "an instance's endpoint is an http(s) URL")
        context = self._ssl_context if endpoint.scheme == "https" else None
        transport: asyncio.Transport | None = None
        try:
            async with asyncio.timeout(timeout.sock_connect):
                transport, handshake = await self._loop.create_connection(_Handshake, host, port, ssl=context)
                transport.write(_upgrade_request(endpoint, self._authorization))
                head = await handshake.head
        except BaseException as error:
            if transport is not None:
                transport.close()
            if isinstance(error, TimeoutError):  # not wrapped in aiohttp's error, which would name the made-up host
                reason = f"the bridge ingress at {endpoint.origin()} opened no tunnel within {timeout.sock_connect} s"
                raise aiohttp.ClientConnectionError(reason) from error
            if isinstance(error, OSError):
                reason = f"cannot reach the bridge ingress at {endpoint.origin()}: {error}"
                raise aiohttp.ClientConnectionError(reason) from error
            raise
        if head.status != 101 or head.headers.get("Upgrade", "").lower() != TUNNEL_UPGRADE:
            transport.close()
            raise TunnelRefusedError(head.status, head.headers)
        if then is not None:
            try:
                async with asyncio.timeout(timeout.sock_connect):
                    handshake = await _connected(transport, handshake, then)
            except BaseException:
                transport.close()
                raise
        # From here on the connection is the instance's: aiohttp's response handler reads it.
        protocol = self._factory()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if handshake.rest:
            protocol.data_received(handshake.rest)
        return protocol
