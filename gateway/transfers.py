"""The browser-facing transfer endpoints: CHUNKED uploads and downloads, streamed to the user's instance.

``files/upload`` and ``files/download`` hand the browser an endpoint on the gateway
(``ucim.gateway.files``). The browser calls it without Core's JWT: the one-time token the
user's instance made is the credential, and that instance checks it. The user, and with
it the instance to ask, comes from ``usernameHint`` (or ``UCloud-Username``); a wrong
hint only reaches an instance that does not know the token.

* ``POST /ucloud/<p>/upload``: one CHUNKED chunk (``Chunked-Upload-Token``, ``-Offset``,
  ``-Total-Size``), streamed to the instance's UPLOAD_CHUNK_PATH;
* ``GET /ucloud/<p>/upload``: the upload's progress (the token header only);
* ``GET /ucloud/<p>/upload?token=…`` upgraded to a websocket: a folder upload (WEBSOCKET_V2), its
  frames relayed unread to the instance's FOLDER_UPLOAD_PATH, which speaks the protocol;
* ``GET /ucloud/<p>/download?token=…``: the file, honouring Range and If-Range;
* ``OPTIONS`` on both: the CORS preflight. Every answer carries
  ``Access-Control-Allow-Origin: *``, errors included, so the browser can read the ``why``.
  The policy and the chunk limit are the instance's too (``ucim.common.transfer_contract``).

An instance stopped while idle is woken and waited for (``transfer_wait_seconds``):
uploads and downloads outlive instance restarts, since the instance keeps its sessions
on disk. A user with neither instance nor connection gets the same 404 as an unknown
token, so the endpoints do not tell which users exist.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Final

import aiohttp
from aiohttp import web
from prometheus_client import Counter

from ucim.common import instance_api as api
from ucim.common import splice
from ucim.common.protocol import USERNAME_HEADER, decode_username
from ucim.common.proxy_bodies import is_small, pieces
from ucim.common.splice import SocketBody, SplicedPayload
from ucim.common.transfer_contract import CORS_HEADERS, MAX_CHUNK_BYTES, PREFLIGHT_HEADERS
from ucim.common.upload_frames import MAX_FRAME_BYTES
from ucim.gateway.auth import USERNAME_HINT, check_username
from ucim.gateway.connections import is_connected
from ucim.gateway.errors import ProviderError
from ucim.gateway.instance_proxy import (
    InstanceNotReadyError,
    InstanceUnreachableError,
    pick_headers,
    relay,
)
from ucim.gateway.instances import MappingRefusedError
from ucim.gateway.keys import CONNECTIONS, INSTANCES, PROXY, SETTINGS, TOKEN_PATHS
from ucim.gateway.metrics import DOWNLOAD_BYTES, UPLOAD_BYTES
from ucim.gateway.sockets import tracked
from ucim.gateway.ws_relay import relay_frames

log = logging.getLogger(__name__)

UNKNOWN: Final = "unknown or expired token"
BUSY_FOLDER: Final = "the folder upload cannot start: its folder's name is taken, or it is open on another connection"
# Pings through the tunnel while a folder upload waits (for the user, or the disk): the bridge counts them as activity.
UPLOAD_HEARTBEAT_SECONDS: Final = 30.0
UPLOAD_HEADERS: Final = (
    "Content-Type",
    api.CHUNKED_TOKEN_HEADER,
    api.CHUNKED_OFFSET_HEADER,
    api.CHUNKED_TOTAL_SIZE_HEADER,
)
PROGRESS_HEADERS: Final = (api.CHUNKED_TOKEN_HEADER,)
DOWNLOAD_HEADERS: Final = ("Range", "If-Range", "If-None-Match", "If-Modified-Since")


def transfer_user(request: web.Request) -> str:
    """The user whose instance serves this transfer, from ``usernameHint`` or ``UCloud-Username``."""
    encoded = request.query.get(USERNAME_HINT) or request.headers.get(USERNAME_HEADER)
    if not encoded:
        raise ProviderError(400, f"the {USERNAME_HINT} query parameter (or the {USERNAME_HEADER} header) is required")
    try:
        username = decode_username(encoded)
    except ValueError as error:
        raise ProviderError(400, f"invalid {USERNAME_HINT}: {error}") from error
    return check_username(username, USERNAME_HINT)


async def wake(request: web.Request, username: str) -> None:
    """Start the user's instance again (or at all, for a connected user) and wait for it, bounded."""
    app = request.config_dict
    instances = app[INSTANCES]
    if await instances.get(username) is None and not is_connected(
        await app[CONNECTIONS].get(username), datetime.now(UTC)
    ):
        raise ProviderError(404, UNKNOWN)
    await instances.ensure(username)
    try:
        async with asyncio.timeout(app[SETTINGS].transfer_wait_seconds):
            await instances.wait_ready(username)
    except MappingRefusedError as error:
        raise ProviderError(404, UNKNOWN) from error
    except TimeoutError as error:
        raise ProviderError(503, "the instance of this user is starting; try again shortly") from error
    log.info("instance woken", extra={"ucloud_user": username})


class _Body:
    """The request body on its way on, remembering whether any of it was taken (then it cannot be sent again).

    Spliced from the browser's connection into the instance's when both are plain sockets
    (``ucim.common.splice``), else streamed through aiohttp.
    """

    def __init__(self, request: web.Request, counter: Counter | None, idle_seconds: float) -> None:
        self._request = request
        self._counter = counter
        self._idle_seconds = idle_seconds
        self._spliced: SplicedPayload | None = None
        self._streamed = False

    @property
    def started(self) -> bool:
        return self._streamed or (self._spliced is not None and self._spliced.started)

    def payload(self) -> SplicedPayload | AsyncIterator[bytes] | None:
        if not self._request.body_exists:
            return None
        socket_body = SocketBody.of(self._request)
        if socket_body is None:
            return pieces(self._request, self._streamed_piece)
        counted = self._counter.inc if self._counter is not None else None
        self._spliced = SplicedPayload(socket_body, self._idle_seconds, counted)
        return self._spliced

    def _streamed_piece(self, size: int) -> None:
        self._streamed = True
        if self._counter is not None:
            self._counter.inc(size)


async def forward_transfer(
    request: web.Request,
    path: str,
    header_names: tuple[str, ...],
    *,
    params: dict[str, str] | None = None,
    upload: Counter | None = None,
    download: Counter | None = None,
) -> web.StreamResponse:
    """Forward to the user's instance, waking it when it is not running; the answer streams back."""
    username = transfer_user(request)
    proxy = request.app[PROXY]
    headers = pick_headers(request, header_names)
    # An upload's small chunks (a small file is one) and its progress take a tunnel; downloads and large
    # chunks are forwarded, so that the bridge splices them.
    tunnel = path == api.UPLOAD_CHUNK_PATH and is_small(request.content_length or 0)
    for attempt in (1, 2):
        body = _Body(request, upload, request.app[SETTINGS].instance_read_timeout_seconds)
        try:
            upstream = await proxy.send(
                username, request.method, path, headers=headers, params=params, body=body.payload(), tunnel=tunnel
            )
        except InstanceNotReadyError as error:
            if body.started:
                # Part of the body is gone: only the browser can send it again.
                raise ProviderError(503, "the storage service of this user restarted; send the chunk again") from error
            if attempt == 2:
                raise ProviderError(503, "the storage service of this user is starting; try again shortly") from error
            await wake(request, username)
            continue
        except InstanceUnreachableError as error:
            raise ProviderError(502, str(error)) from error
        return await relay(
            request, upstream, download, idle_seconds=request.app[SETTINGS].instance_read_timeout_seconds
        )
    raise AssertionError("unreachable: the second attempt returns or raises")  # pragma: no cover


async def upload_chunk(request: web.Request) -> web.StreamResponse:
    if api.CHUNKED_TOKEN_HEADER not in request.headers:
        raise ProviderError(400, f"the {api.CHUNKED_TOKEN_HEADER} header is required")
    # The CHUNKED protocol requires Content-Length and chunks of at most 32 MB: nothing unbounded gets through.
    if request.content_length is None:
        raise ProviderError(411, "Content-Length is required: send each chunk with its length")
    if request.content_length > MAX_CHUNK_BYTES:
        raise ProviderError(413, f"a chunk may hold at most {MAX_CHUNK_BYTES} bytes")
    return await forward_transfer(request, api.UPLOAD_CHUNK_PATH, UPLOAD_HEADERS, upload=UPLOAD_BYTES)


async def upload_progress(request: web.Request) -> web.StreamResponse:
    if api.CHUNKED_TOKEN_HEADER not in request.headers:
        raise ProviderError(400, f"the {api.CHUNKED_TOKEN_HEADER} header is required")
    return await forward_transfer(request, api.UPLOAD_CHUNK_PATH, PROGRESS_HEADERS)


async def upload_get(request: web.Request) -> web.StreamResponse:
    """``GET`` of the upload endpoint: a folder upload's websocket, or a CHUNKED upload's progress."""
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return await folder_upload(request)
    return await upload_progress(request)


async def folder_upload(request: web.Request) -> web.StreamResponse:
    """A folder upload: the browser's socket relayed to the user's instance (woken first if it is stopped)."""
    username = transfer_user(request)
    token = request.query.get("token")
    if not token:
        raise ProviderError(400, "the token query parameter is required")
    upstream = await _folder_socket(request, username, token)
    # No compression: file data rarely shrinks, and deflating 16 MB chunks would take the gateway's CPU.
    browser = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, compress=False)
    try:
        async with tracked(request, browser, "upload"):
            await browser.prepare(request)
            await relay_frames(browser, upstream, _count_upload)
    finally:
        await upstream.close()
        await browser.close()
    return browser


def _count_upload(direction: str, size: int) -> None:
    if direction == "up":
        UPLOAD_BYTES.inc(size)


async def _folder_socket(request: web.Request, username: str, token: str) -> aiohttp.ClientWebSocketResponse:
    """The instance's end of a folder upload; the instance's refusal of the token as a 4xx."""
    proxy = request.app[PROXY]
    for attempt in (1, 2):
        try:
            return await proxy.websocket(
                username,
                api.FOLDER_UPLOAD_PATH,
                {"token": token},
                heartbeat=UPLOAD_HEARTBEAT_SECONDS,
                max_msg_size=MAX_FRAME_BYTES,
            )
        except InstanceNotReadyError as error:
            if attempt == 2:
                raise ProviderError(503, "the storage service of this user is starting; try again shortly") from error
            await wake(request, username)
        except InstanceUnreachableError as error:
            raise ProviderError(502, str(error)) from error
        except aiohttp.WSServerHandshakeError as error:
            if error.status == 404:
                raise ProviderError(404, UNKNOWN) from error
            if error.status == 409:
                raise ProviderError(409, BUSY_FOLDER) from error
            if 400 <= error.status < 500:
                raise ProviderError(error.status, f"the folder upload was refused ({error.status})") from error
            raise ProviderError(502, f"the instance did not open the folder upload ({error.status})") from error
    raise AssertionError("unreachable: the second attempt returns or raises")  # pragma: no cover


async def download_file(request: web.Request) -> web.StreamResponse:
    token = request.query.get("token")
    if not token:
        raise ProviderError(400, "the token query parameter is required")
    return await forward_transfer(
        request, api.DOWNLOAD_FILE_PATH, DOWNLOAD_HEADERS, params={"token": token}, download=DOWNLOAD_BYTES
    )


async def preflight(request: web.Request) -> web.Response:
    return web.Response(status=204, headers=PREFLIGHT_HEADERS)


async def add_cors(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every answer of a transfer endpoint is readable cross-origin."""
    if request.path in request.config_dict.get(TOKEN_PATHS, frozenset()) and len(request.match_info.apps) == 1:
        response.headers.update(CORS_HEADERS)


def setup_transfer_routes(app: web.Application, base: str) -> None:
    """The browser's routes under ``base``; they need no JWT (``TOKEN_PATHS``) and answer CORS."""
    upload, download = f"{base}/upload", f"{base}/download"
    app.router.add_post(upload, upload_chunk)
    app.router.add_get(upload, upload_get, allow_head=False)
    app.router.add_get(download, download_file)
    app.router.add_route("OPTIONS", upload, preflight)
    app.router.add_route("OPTIONS", download, preflight)
    app[TOKEN_PATHS] = app.get(TOKEN_PATHS, frozenset()) | {upload, download}
    app.on_response_prepare.append(add_cors)
    splice.enable(app)  # chunks go on to the instance straight from the browser's connection
