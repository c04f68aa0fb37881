"""A stand-in for the slurm_bridge ingress and the user instances behind it, for the gateway's unit tests.

It answers ``/instances/<name>/<path>`` like the real ingress does at its edges (401 with
its challenge for a wrong token, 503 with ``Retry-After`` for an instance that is not
running) and plays the instance's file and transfer API (``ucim.common.instance_api``)
well enough to check what the gateway forwards: every request is recorded, bodies are
read in chunks and answers are streamed, with hooks to pause mid-stream.

Tunnels (``GET /instances/<name>`` upgraded) are the real bridge's (``ucim.common.byte_tunnels``):
each instance that gets one listens on a unix socket of its own, where the same fake instance
answers. ``stop`` stops an instance the way the bridge sees it: its tunnels close.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from ucim.common import instance_api as api
from ucim.common.byte_tunnels import tunnel, unix_socket, wants_tunnel
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
    tunneled: bool  # it came through a tunnel, not forwarded by the ingress


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
    # What the instance's log follow (JOBS_FOLLOW_PATH) answers: these LogChunks as NDJSON.
    follow_chunks: list[dict[str, Any]] = field(default_factory=list)

    # False: a bridge from before tunnels (the upgrade finds no route); how many tunnels were opened or refused.
    tunnels: bool = True
    tunnels_opened: int = 0
    upgrades_refused: int = 0
    _socket_dir: Path | None = None  # made with the first tunnel
    # name -> the instance's unix server (started with its first tunnel) and its open tunnels
    _servers: dict[str, tuple[asyncio.Server, web.Server]] = field(default_factory=dict)
    _tunnels: dict[str, set[asyncio.Event]] = field(default_factory=dict)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("GET", "/instances/{name}", self.open_tunnel)
        app.router.add_route("*", "/instances/{name}/{tail:.*}", self.handle)
        app.on_cleanup.append(self._clean_up)
        return app

    def last(self) -> Seen:
        return self.seen[-1]

    async def stop(self, name: str) -> None:
        """The instance stops: the ingress answers 503 for it, and its tunnels close."""
        self.running.discard(name)
        if name in self._servers:
            server, web_server = self._servers.pop(name)
            server.close()
            await web_server.shutdown(0.1)
        for ended in list(self._tunnels.get(name, ())):
            await ended.wait()

    def _refusal(self, request: web.Request, name: str) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response(
                error_body(401, "a valid ingress token is required"),
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="ucim-bridge"'},
            )
        if name not in self.running:
            return web.json_response(
                error_body(503, f"instance {name!r} is not running"), status=503, headers={"Retry-After": "1"}
            )
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        return self._refusal(request, name) or await self.serve(request, name, "/" + request.match_info["tail"])

    async def open_tunnel(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if (refusal := self._refusal(request, name)) is not None:
            return refusal
        if not self.tunnels or not wants_tunnel(request, api.TUNNEL_UPGRADE):
            self.upgrades_refused += 1
            return web.Response(status=404, text="404: Not Found")
        self.tunnels_opened += 1
        socket_path = await self._instance_socket(name)
        ended = asyncio.Event()
        self._tunnels.setdefault(name, set()).add(ended)
        try:
            return await tunnel(request, unix_socket(socket_path), api.TUNNEL_UPGRADE)
        finally:
            ended.set()
            self._tunnels[name].discard(ended)

    async def _instance_socket(self, name: str) -> str:
        if self._socket_dir is None:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="ucim-fake-ingress-"))
        path = str(self._socket_dir / f"{name}.sock")
        if name not in self._servers:

            async def serve_tunneled(request: web.BaseRequest) -> web.StreamResponse:
                return await self.serve(request, name, request.path, tunneled=True)

            web_server = web.Server(serve_tunneled)
            Path(path).unlink(missing_ok=True)  # left by a stopped one
            server = await asyncio.get_running_loop().create_unix_server(web_server, path)
            self._servers[name] = (server, web_server)
        return path

    async def _clean_up(self, _app: web.Application) -> None:
        for name in list(self._servers):
            await self.stop(name)
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    async def serve(
        self, request: web.BaseRequest, name: str, path: str, *, tunneled: bool = False
    ) -> web.StreamResponse:
        """The instance ``name`` answers ``request`` for ``path``."""
        body, chunks = b"", 0
        async for chunk in request.content.iter_chunked(1 << 16):
            if not body and path == api.UPLOAD_CHUNK_PATH:
                self.first_upload_bytes.set()
                if self.resume_upload is not None:
                    await self.resume_upload.wait()
            body += chunk
            chunks += 1
        headers = dict(request.headers)
        self.seen.append(Seen(name, request.method, path, dict(request.query), headers, body, chunks, tunneled))
        if path in self.refusals:
            status, answer = self.refusals.pop(path)
            return web.json_response(answer, status=status)
        if path == api.DOWNLOAD_FILE_PATH:
            return await self.serve_download(request)
        if path == api.JOBS_FOLLOW_PATH:
            lines = "".join(json.dumps(chunk) + "\n" for chunk in self.follow_chunks)
            return web.Response(text=lines, content_type="application/x-ndjson")
        return web.json_response(self.answer(request.method, path, body))

    def answer(self, method: str, path: str, body: bytes) -> Any:
        if path == api.UPLOAD_CHUNK_PATH:
            return {"offset": len(body), "totalSize": len(body), "complete": method == "POST", "id": "/1/file.txt"}
        parsed: Any = json.loads(body) if body else {}
        if path in (api.FILES_UPLOAD_PATH, api.FILES_DOWNLOAD_PATH):
            kind = "up" if path == api.FILES_UPLOAD_PATH else "down"
            # As an instance answers: a folder's upload speaks WEBSOCKET_V2.
            folder = {"protocol": "WEBSOCKET_V2"}
            return {
                "responses": [
                    {"token": f"{kind}-{i}/x+y", **(folder if item.get("type") == "FOLDER" else {})}
                    for i, item in enumerate(parsed["items"])
                ]
            }
        if path == api.FILES_BROWSE_PATH:
            entry = {"status": {"type": "FILE", "sizeInBytes": 3, "modifiedAt": 1, "accessedAt": 1}, "createdAt": 1}
            items = [{"id": f"/1/f{i}", **entry} for i in range(self.browse_entries)]
            return {"items": items, "itemsPerPage": 100, "next": None}
        return {"echo": parsed}

    async def serve_download(self, request: web.BaseRequest) -> web.StreamResponse:
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
