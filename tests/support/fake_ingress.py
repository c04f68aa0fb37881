"""A stand-in for the slurm_bridge ingress and the user instances behind it, for the gateway's unit tests.

It answers ``/instances/<name>/<path>`` like the real ingress does at its edges (401 with
its challenge for a wrong token, 503 with ``Retry-After`` for an instance that is not
running) and plays the instance's file and transfer API (``ucim.common.instance_api``)
well enough to check what the gateway forwards: every request is recorded, bodies are
read in chunks and answers are streamed, with hooks to pause mid-stream.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ucim.common import instance_api as api
from ucim.common.protocol import error_body

TOKEN = "ingress-token-for-unit-tests"


@dataclass
class Seen:
    """One request an instance received."""

    instance: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    chunks: int  # how many reads the body took


@dataclass
class FakeIngress:
    running: set[str] = field(default_factory=set)
    seen: list[Seen] = field(default_factory=list)
    # path -> (status, body): the next request to that path is answered so, once.
    refusals: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    # The download's content; served in pieces of download_piece bytes.
    download: bytes = b"0123456789" * 1000
    download_piece: int = 1000
    # Set by the test to hold the upload (after its first chunk) or the download (after its first piece).
    first_upload_bytes: asyncio.Event = field(default_factory=asyncio.Event)
    resume_upload: asyncio.Event | None = None
    download_started: asyncio.Event = field(default_factory=asyncio.Event)
    resume_download: asyncio.Event | None = None
    browse_entries: int = 100

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/instances/{name}/{tail:.*}", self.handle)
        return app

    def last(self) -> Seen:
        return self.seen[-1]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response(
                error_body(401, "a valid ingress token is required"),
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="ucim-bridge"'},
            )
        name = request.match_info["name"]
        if name not in self.running:
            return web.json_response(
                error_body(503, f"instance {name!r} is not running"), status=503, headers={"Retry-After": "1"}
            )
        path = "/" + request.match_info["tail"]
        body, chunks = b"", 0
        async for chunk in request.content.iter_chunked(1 << 16):
            if not body and path == api.UPLOAD_CHUNK_PATH:
                self.first_upload_bytes.set()
                if self.resume_upload is not None:
                    await self.resume_upload.wait()
            body += chunk
            chunks += 1
        self.seen.append(Seen(name, request.method, path, dict(request.query), dict(request.headers), body, chunks))
        if path in self.refusals:
            status, answer = self.refusals.pop(path)
            return web.json_response(answer, status=status)
        if path == api.DOWNLOAD_FILE_PATH:
            return await self.serve_download(request)
        return web.json_response(self.answer(request.method, path, body))

    def answer(self, method: str, path: str, body: bytes) -> Any:
        if path == api.UPLOAD_CHUNK_PATH:
            return {"offset": len(body), "totalSize": len(body), "complete": method == "POST", "id": "/1/file.txt"}
        parsed: Any = json.loads(body) if body else {}
        if path in (api.FILES_UPLOAD_PATH, api.FILES_DOWNLOAD_PATH):
            kind = "up" if path == api.FILES_UPLOAD_PATH else "down"
            return {"responses": [{"token": f"{kind}-{i}/x+y"} for i, _ in enumerate(parsed["items"])]}
        if path == api.FILES_BROWSE_PATH:
            entry = {"status": {"type": "FILE", "sizeInBytes": 3, "modifiedAt": 1, "accessedAt": 1}, "createdAt": 1}
            items = [{"id": f"/1/f{i}", **entry} for i in range(self.browse_entries)]
            return {"items": items, "itemsPerPage": 100, "next": None}
        return {"echo": parsed}

    async def serve_download(self, request: web.Request) -> web.StreamResponse:
        data, status, headers = self.download, 200, {"Accept-Ranges": "bytes", "ETag": '"v1"'}
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("Range", ""))
        if match:
            start = int(match[1])
            end = int(match[2]) if match[2] else len(data) - 1
            data, status = data[start : end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(self.download)}"
        response = web.StreamResponse(status=status, headers=headers)
        response.content_type = "application/octet-stream"
        response.headers["Content-Disposition"] = "attachment; filename*=UTF-8''f.bin"
        response.content_length = len(data)
        await response.prepare(request)
        for start in range(0, len(data), self.download_piece):
            await response.write(data[start : start + self.download_piece])
            self.download_started.set()
            if self.resume_download is not None:
                await self.resume_download.wait()
        await response.write_eof()
        return response
