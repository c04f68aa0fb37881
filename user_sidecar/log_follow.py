"""``POST /jobs/follow``: a job's output, as the user, streamed as NDJSON ``LogChunk`` lines.

The gateway relays the lines to Core's follow websocket. With ``follow`` the answer goes on
until the caller hangs up (checked at every chunk and every tick of the tailer, so within
``FALLBACK_SECONDS``); without, it ends once what the files hold is sent. An empty line
goes out after FOLLOW_KEEPALIVE_SECONDS of silence, so no idle timeout on the way cuts it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator
from pathlib import Path

from aiohttp import web

from ucim.common.instance_api import FOLLOW_KEEPALIVE_SECONDS, FollowRequest, LogChunk
from ucim.user_sidecar.log_tail import LogTailer
from ucim.user_sidecar.metrics import LOG_BYTES
from ucim.user_sidecar.views import parse


def job_folder(request: FollowRequest) -> Path:
    """The job folder the request names, checked as the user: a 400, 403 or 404 that says why not."""
    folder = Path(request.job_folder)
    if not folder.is_absolute() or ".." in folder.parts:
        raise web.HTTPBadRequest(text=f"the job folder must be an absolute path without '..': {request.job_folder!r}")
    try:
        if not folder.is_dir():
            raise web.HTTPNotFound(text=f"the job folder {folder} does not exist")
        folder.stat()
        next(iter(folder.iterdir()), None)  # listing it is what the tailer does; refused now rather than later
    except PermissionError as error:
        raise web.HTTPForbidden(text=f"the job folder {folder} is not readable for this user") from error
    return folder


async def follow_job(request: web.Request) -> web.StreamResponse:
    body = await parse(request, FollowRequest)
    tailer = LogTailer(job_folder(body), body.offsets)
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        await _stream(request, response, tailer.follow() if body.follow else tailer.read_all())
        await response.write_eof()
    except ConnectionResetError:
        pass  # the caller went away while we wrote
    return response


async def _stream(
    request: web.Request, response: web.StreamResponse, chunks: AsyncGenerator[LogChunk | None, None]
) -> None:
    quiet_since = time.monotonic()
    async with contextlib.aclosing(chunks):  # closes the inotify instance however this ends
        async for chunk in chunks:
            if request.transport is None or request.transport.is_closing():
                return  # the caller went away
            if chunk is None:
                if time.monotonic() - quiet_since >= FOLLOW_KEEPALIVE_SECONDS:
                    await response.write(b"\n")
                    quiet_since = time.monotonic()
                continue
            line = chunk.model_dump_json(by_alias=True).encode() + b"\n"
            await response.write(line)
            LOG_BYTES.inc(len(line))
            quiet_since = time.monotonic()
