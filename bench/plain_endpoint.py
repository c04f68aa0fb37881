"""The plain endpoint behind the nginx baseline of bench/bench_files.py: store and serve files, nothing else.

It speaks the CHUNKED upload of UCloud's web client in its simplest form, so that the bench's
client sends exactly the same requests to it as to the full path:

* ``POST /upload?name=<relative path>`` with ``Chunked-Upload-Offset``: the body is written
  at that offset of ``<root>/<name>`` as it arrives (an offset of 0 starts the file afresh);
  answers ``{"offset": <bytes stored>}``;
* ``GET /download?name=<relative path>``: the file, sent with sendfile (``web.FileResponse``);
* ``GET /healthz``: 200, to know that it serves.

No tokens, no conflict policies, no temporary file and rename: what a plain server does.
Writes happen in the event loop (no thread hop): a bench client sends one large file at a
time or a few small ones, and the page cache takes them at memory speed. With ``--fsync``
the chunk that completes a file (offset + its length = ``Chunked-Upload-Total-Size``) is
answered once the file and its folder are on disk (fsync, in a thread, so that several
files' flushes can share the journal's commits), as the CHUNKED rules ask and as ucim's
instance does; without it nothing is flushed.

    python -m bench.plain_endpoint --socket /tmp/x/plain.sock --root /tmp/x/store [--fsync]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path, PurePosixPath

from aiohttp import web

from ucim.common.file_writes import pwrite_all
from ucim.common.instance_api import CHUNKED_OFFSET_HEADER, CHUNKED_TOTAL_SIZE_HEADER
from ucim.common.protocol import error_body

ROOT = web.AppKey("root", Path)
FSYNC = web.AppKey("fsync", bool)
PIECE = 1 << 20


def error(status: int, why: str) -> web.Response:
    return web.json_response(error_body(status, why), status=status)


def target(request: web.Request) -> Path | None:
    """``<root>/<name>`` for a relative name without ``..``; None for any other name."""
    name = request.query.get("name", "")
    path = PurePosixPath(name)
    if not name or "\x00" in name or path.is_absolute() or ".." in path.parts:
        return None
    return request.app[ROOT] / path


def bad_name(request: web.Request) -> web.Response:
    return error(400, f"name must be a relative path without '..', not {request.query.get('name', '')[:100]!r}")


async def upload(request: web.Request) -> web.Response:
    path = target(request)
    if path is None:
        return bad_name(request)
    try:
        offset = int(request.headers.get(CHUNKED_OFFSET_HEADER, "0"))
        total = int(request.headers.get(CHUNKED_TOTAL_SIZE_HEADER, "-1"))
    except ValueError:
        return error(400, f"{CHUNKED_OFFSET_HEADER} and {CHUNKED_TOTAL_SIZE_HEADER} must be whole numbers of bytes")
    if offset < 0:
        return error(400, f"{CHUNKED_OFFSET_HEADER} must not be negative")
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if offset == 0 else 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        return error(404 if isinstance(exc, FileNotFoundError) else 403, f"cannot write {path.name}: {exc.strerror}")
    try:
        position = offset
        async for piece in request.content.iter_chunked(PIECE):
            # In the page cache's cheap pieces, as the instance writes (ucim.common.file_writes).
            position += pwrite_all(fd, [piece], position)
        if request.app[FSYNC] and position >= total >= 0:
            await asyncio.to_thread(make_durable, fd, path.parent)
    finally:
        os.close(fd)
    return web.json_response({"offset": position})


def make_durable(fd: int, folder: Path) -> None:
    """The file's data and its name in the folder on disk."""
    os.fsync(fd)
    folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(folder_fd)
    finally:
        os.close(folder_fd)


async def download(request: web.Request) -> web.StreamResponse:
    path = target(request)
    if path is None:
        return bad_name(request)
    if not path.is_file():
        return error(404, f"{request.query['name'][:100]!r} does not exist")
    return web.FileResponse(path, chunk_size=PIECE)


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def init_app(root: Path, fsync: bool = False) -> web.Application:
    app = web.Application(client_max_size=0)
    app[ROOT] = root
    app[FSYNC] = fsync
    app.router.add_post("/upload", upload)
    app.router.add_get("/download", download)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(root: Path, socket: Path, fsync: bool) -> None:
    """Serve until SIGTERM or SIGINT."""
    runner = web.AppRunner(init_app(root, fsync), access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await web.UnixSite(runner, str(socket)).start()
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--socket", type=Path, required=True, help="the unix socket to serve on")
    parser.add_argument("--root", type=Path, required=True, help="the folder files are stored in and served from")
    parser.add_argument("--fsync", action="store_true", help="answer a file's last chunk once it is on disk")
    args = parser.parse_args()
    asyncio.run(serve(args.root, args.socket, args.fsync))


if __name__ == "__main__":
    main()
