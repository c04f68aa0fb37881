"""HTTP handlers of uploads and downloads (paths in ``ucim.common.instance_api``; logic in ``.transfers``).

* ``POST FILES_UPLOAD_PATH`` / ``FILES_DOWNLOAD_PATH``: Core's bulk requests; a token per item.
* ``POST UPLOAD_CHUNK_PATH``: one CHUNKED chunk (headers ``Chunked-Upload-Token``,
  ``-Offset``, ``-Total-Size`` and ``Content-Length``; the body is the data), answered
  with ``UploadProgress``. ``GET`` with the token header answers the progress.
* ``GET DOWNLOAD_FILE_PATH?token=<t>``: the file, by aiohttp's ``FileResponse`` (Range,
  If-Range, ETag and sendfile), on ``/proc/self/fd/<fd>``: that reopens exactly the inode
  opened safely through the drive's folder fds, so no path is resolved again.

The browser calls the chunk and download paths itself (across origins), so their answers,
errors included, allow any origin; ``OPTIONS`` answers a CORS preflight. The policy, and the
chunk limit, are the gateway's too (``ucim.common.transfer_contract``).
"""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import os
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final
from urllib.parse import quote

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from ucim.common import splice
from ucim.common.instance_api import (
    CHUNKED_OFFSET_HEADER,
    CHUNKED_TOKEN_HEADER,
    CHUNKED_TOTAL_SIZE_HEADER,
    DOWNLOAD_FILE_PATH,
    FILES_DOWNLOAD_PATH,
    FILES_UPLOAD_PATH,
    FOLDER_UPLOAD_PATH,
    UPLOAD_CHUNK_PATH,
    TransferToken,
    UploadProgress,
)
from ucim.common.protocol import (
    BulkRequest,
    BulkResponse,
    FilesProviderCreateDownloadRequestItem,
    FilesProviderCreateUploadRequestItem,
    dump,
)
from ucim.common.splice import SocketBody, widen_send_buffer
from ucim.common.transfer_contract import CORS_HEADERS, PREFLIGHT_HEADERS
from ucim.common.upload_frames import MAX_FRAME_BYTES
from ucim.user_sidecar.folder_upload_io import Folders
from ucim.user_sidecar.folder_uploads import FolderUpload
from ucim.user_sidecar.keys import TRANSFERS
from ucim.user_sidecar.metrics import DOWNLOAD_BYTES, TRANSFER_EVENTS
from ucim.user_sidecar.middlewares import error_response
from ucim.user_sidecar.paths import PathRefusedError
from ucim.user_sidecar.transfer_io import WRITE_PIECE_BYTES, BodyInterruptedError, TransferRefusedError
from ucim.user_sidecar.transfer_plans import protocol_of
from ucim.user_sidecar.views import parse

# Built once, here: pydantic makes a class per parametrization.
UploadRequest = BulkRequest[FilesProviderCreateUploadRequestItem]
DownloadRequest = BulkRequest[FilesProviderCreateDownloadRequestItem]
Tokens = BulkResponse[TransferToken]

_NUMBER: Final = re.compile(r"^-?[0-9]{1,20}$")


def add_transfer_routes(app: web.Application) -> None:
    """The transfer routes, and the sweeper of expired sessions; ``app[TRANSFERS]`` must be set."""
    splice.enable(app)  # chunks are written straight from the socket
    app.router.add_post(FILES_UPLOAD_PATH, create_uploads)
    app.router.add_post(FILES_DOWNLOAD_PATH, create_downloads)
    app.router.add_post(UPLOAD_CHUNK_PATH, upload_chunk)
    app.router.add_get(UPLOAD_CHUNK_PATH, upload_progress, allow_head=False)
    app.router.add_route("OPTIONS", UPLOAD_CHUNK_PATH, preflight)
    app.router.add_get(FOLDER_UPLOAD_PATH, folder_upload, allow_head=False)
    app.router.add_get(DOWNLOAD_FILE_PATH, download)  # HEAD too: it answers without using the token up
    app.router.add_route("OPTIONS", DOWNLOAD_FILE_PATH, preflight)
    app.cleanup_ctx.append(_sweeping)


async def _sweeping(app: web.Application) -> AsyncIterator[None]:
    sweeper = asyncio.create_task(app[TRANSFERS].sweep_forever())
    yield
    sweeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeper


def _refusal(error: PathRefusedError) -> web.Response:
    """The error envelope, readable by a browser on another origin; a 409 says where to continue."""
    response = error_response(error.status, str(error))
    response.headers.update(CORS_HEADERS)
    if isinstance(error, TransferRefusedError) and error.expected_offset is not None:
        response.headers[CHUNKED_OFFSET_HEADER] = str(error.expected_offset)
    return response


def _tokens(tokens: list[str]) -> web.Response:
    return web.json_response(dump(Tokens(responses=[TransferToken(token=token) for token in tokens])))


async def create_uploads(request: web.Request) -> web.Response:
    body = await parse(request, UploadRequest)
    try:
        tokens = await asyncio.to_thread(request.app[TRANSFERS].create_uploads, body.items)
    except PathRefusedError as error:
        return error_response(error.status, str(error))
    answers = [
        TransferToken(token=token, protocol=protocol_of(item)) for token, item in zip(tokens, body.items, strict=True)
    ]
    return web.json_response(dump(Tokens(responses=answers)))


async def create_downloads(request: web.Request) -> web.Response:
    body = await parse(request, DownloadRequest)
    try:
        tokens = await asyncio.to_thread(request.app[TRANSFERS].create_downloads, body.items)
    except PathRefusedError as error:
        return error_response(error.status, str(error))
    return _tokens(tokens)


def _number(request: web.Request, name: str) -> int:
    raw = request.headers.get(name)
    if raw is None:
        raise TransferRefusedError(f"the {name} header is missing")
    if not _NUMBER.match(raw.strip()):
        raise TransferRefusedError(f"the {name} header is not a whole number: {raw[:40]!r}")
    return int(raw)


def _progress(progress: UploadProgress) -> web.Response:
    return web.json_response(progress.model_dump(mode="json", by_alias=True), headers=CORS_HEADERS)


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    """The chunk's body as it arrives; a client that goes away ends it with BodyInterruptedError."""
    try:
        async for piece in request.content.iter_chunked(WRITE_PIECE_BYTES):
            yield piece
    except (ConnectionError, aiohttp.ClientPayloadError) as error:
        raise BodyInterruptedError(str(error)) from error


async def upload_chunk(request: web.Request) -> web.Response:
    try:
        token = request.headers.get(CHUNKED_TOKEN_HEADER)
        if token is None:
            raise TransferRefusedError(f"the {CHUNKED_TOKEN_HEADER} header is missing")
        offset = _number(request, CHUNKED_OFFSET_HEADER)
        total_size = _number(request, CHUNKED_TOTAL_SIZE_HEADER)
        length = request.content_length
        if length is None:
            raise TransferRefusedError("a chunk needs a Content-Length", 411)
        progress = await request.app[TRANSFERS].write_chunk(
            token, offset=offset, total_size=total_size, length=length, body=SocketBody.of(request) or _body(request)
        )
    except PathRefusedError as error:
        return _refusal(error)
    return _progress(progress)


async def upload_progress(request: web.Request) -> web.Response:
    try:
        progress = await request.app[TRANSFERS].upload_progress(request.headers.get(CHUNKED_TOKEN_HEADER))
    except PathRefusedError as error:
        return _refusal(error)
    return _progress(progress)


async def folder_upload(request: web.Request) -> web.StreamResponse:
    """``GET FOLDER_UPLOAD_PATH?token=``: a folder upload's connection (``folder_uploads``); 4xx before upgrading."""
    transfers = request.app[TRANSFERS]
    try:
        key, session = await transfers.begin_folder_upload(request.query.get("token"))
    except PathRefusedError as error:
        return _refusal(error)
    upload: FolderUpload | None = None
    try:
        try:
            top_fd, session = await asyncio.to_thread(transfers.open_folder_upload, key, session)
        except PathRefusedError as error:
            return _refusal(error)
        folders = Folders(top_fd)
        socket = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, compress=False)
        try:
            await socket.prepare(request)
        except BaseException:
            folders.close()
            raise
        upload = FolderUpload(
            socket, folders, key=key, session=session, file_mode=transfers.file_mode, limits=transfers.limits
        )
        with contextlib.suppress(aiohttp.ClientError, ConnectionError):
            await upload.run()
        return socket
    finally:
        await transfers.end_folder_upload(key, session, used_up=upload is not None and upload.closed_by_client)
        if upload is not None:
            upload.report()


async def preflight(_: web.Request) -> web.Response:
    return web.Response(status=204, headers=PREFLIGHT_HEADERS)


class _HandlerPreparedFileResponse(web.FileResponse):
    """A FileResponse the handler prepares itself (to see its status): aiohttp's second prepare is a no-op."""

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return await web.StreamResponse.prepare(self, request)
        return await super().prepare(request)


def _download_headers(name: str) -> dict[str, str]:
    return {
        **CORS_HEADERS,
        "Content-Type": mimetypes.guess_type(name)[0] or "application/octet-stream",
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name, safe='')}",
        "X-Content-Type-Options": "nosniff",
        # The user's data, behind a one-time token: no shared cache keeps it.
        "Cache-Control": "private, no-store",
    }


async def download(request: web.Request) -> web.StreamResponse:
    transfers = request.app[TRANSFERS]
    try:
        opened = await transfers.open_download(request.query.get("token"))
    except PathRefusedError as error:
        return _refusal(error)
    try:
        # A HEAD sends no file, so it leaves the token as it is.
        uses_token = request.method != "HEAD"
        if uses_token and not await transfers.consume(opened.key):
            return _refusal(TransferRefusedError("unknown or expired download token", 404))
        response = _HandlerPreparedFileResponse(f"/proc/self/fd/{opened.fd}", headers=_download_headers(opened.name))
        connection = request.transport.get_extra_info("socket") if request.transport is not None else None
        if connection is not None:
            widen_send_buffer(connection.fileno())  # the bridge's unix socket: the file goes out in fewer steps
        try:
            await response.prepare(request)
            await response.write_eof()
        except ConnectionError:
            TRANSFER_EVENTS.labels("download", "aborted").inc()
            return response
        if response.status in (200, 206):
            if uses_token:
                TRANSFER_EVENTS.labels("download", "served").inc()
                DOWNLOAD_BYTES.inc(response.content_length or 0)
        elif uses_token:
            # 304, 412 or 416: the file was not sent, so the token was not used.
            await transfers.restore(opened.key, opened.session)
        return response
    finally:
        os.close(opened.fd)


async def exercise(session: aiohttp.ClientSession, base: str, collection: Mapping[str, str]) -> None:
    """Take every transfer code path once, through a served app whose drive ``collection`` is a throw-away folder.

    For the fork server's warm-up: what these paths import lazily (aiohttp's file sender,
    mimetypes' tables, the thread pool, ...) is imported there, before any fork.
    """
    drive = dict(collection)
    target = f"/{drive['id']}/warm-up-upload.txt"
    item = {"id": target, "supportedProtocols": ["CHUNKED"], "conflictPolicy": "RENAME", "resolvedCollection": drive}

    async def call(method: str, path: str, **kwargs: Any) -> Any:
        async with session.request(method, base + path, **kwargs) as response:
            return await response.json() if response.content_type == "application/json" else await response.read()

    def chunk(token: str, offset: int) -> dict[str, str]:
        return {CHUNKED_TOKEN_HEADER: token, CHUNKED_OFFSET_HEADER: str(offset), CHUNKED_TOTAL_SIZE_HEADER: "8"}

    await call("POST", FILES_UPLOAD_PATH, json={"items": [{**item, "type": "FOLDER"}]})  # 400
    token = (await call("POST", FILES_UPLOAD_PATH, json={"items": [item]}))["responses"][0]["token"]
    await call("POST", UPLOAD_CHUNK_PATH, data=b"warm", headers={CHUNKED_TOKEN_HEADER: token})  # 400
    for offset, data in ((0, b"warm"), (9, b"x"), (-1, b"-up!")):  # 200, 409, complete
        done = await call("POST", UPLOAD_CHUNK_PATH, data=data, headers=chunk(token, offset))
    await call("POST", UPLOAD_CHUNK_PATH, data=b"", headers=chunk(token, 0))  # 404: complete
    await call("GET", UPLOAD_CHUNK_PATH, headers={CHUNKED_TOKEN_HEADER: token})
    await call("OPTIONS", UPLOAD_CHUNK_PATH)
    download = {"items": [{"id": done.get("id") or target, "resolvedCollection": drive}]}
    query = {"token": (await call("POST", FILES_DOWNLOAD_PATH, json=download))["responses"][0]["token"]}
    await call("HEAD", DOWNLOAD_FILE_PATH, params=query)
    await call("GET", DOWNLOAD_FILE_PATH, params=query, headers={"Range": "bytes=100-"})  # 416
    await call("GET", DOWNLOAD_FILE_PATH, params=query, headers={"Range": "bytes=2-"})  # 206
    await call("GET", DOWNLOAD_FILE_PATH, params=query)  # 404: used
