"""The program of the catalogue's ``web-echo`` application (ucim/testing/apps/web-echo.yaml): a small web server.

What the interactive-session tests reach through the provider's web routes; each route proves one thing:

* ``GET /``: an HTML page with :data:`MARKER`, whose script opens a websocket to ``/ws`` (same origin, ``ws:``
  or ``wss:`` as the page), sends ``ping-<random>`` and writes the echo into ``<p id="echo">`` (the text it sent
  is in ``<p id="sent">``), so a headless browser's DOM shows that the page and its websocket both worked;
* ``GET /ws``: a websocket echo, text and binary frames;
* ``POST /echo``: the request body streamed back as it arrives (chunked), whatever its size;
* ``GET /bytes?n=N``: N bytes, byte ``i`` being ``i % 256`` (:func:`expected_bytes`), streamed;
* ``GET /whoami``: ``{"user", "host", "port"}``: who runs the server, where, and the port the request came in on
  (a job's main port or its dynamic target's).

Every request is logged to stdout, one line each (the job's stdout.txt). It runs on Debian's python3 and
aiohttp (``python3-aiohttp``, 3.8 on Debian 12): jobs run as their user, who cannot read root's virtualenv.

    python3 -m ucim.testing.web_app --port 8080 [--port 8081] [--host 0.0.0.0]
"""

from __future__ import annotations

import argparse
import getpass
import logging
import socket
import sys
from collections.abc import Sequence
from typing import Final

from aiohttp import WSMsgType, web

MARKER: Final = "ucim web-echo"
CHUNK: Final = 64 * 1024
MAX_BYTES: Final = 1 << 40  # /bytes streams at most 1 TiB
MAX_FRAME: Final = 64 * 1024 * 1024  # websocket messages up to 64 MiB
_PATTERN: Final = bytes(range(256)) * (CHUNK // 256)  # CHUNK is a multiple of 256: every chunk is the same

PAGE: Final = f"""<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>{MARKER}</title></head>
<body>
<h1 id="marker">{MARKER}</h1>
<p>sent: <span id="sent"></span></p>
<p>echo: <span id="echo">waiting</span></p>
<script>
const sent = "ping-" + Math.random().toString(36).slice(2, 12);
const echo = document.getElementById("echo");
document.getElementById("sent").textContent = sent;
const socket = new WebSocket((location.protocol === "https:" ? "wss:" : "ws:") + "//" + location.host + "/ws");
socket.onopen = () => socket.send(sent);
socket.onmessage = (event) => {{ echo.textContent = event.data; socket.close(); }};
socket.onerror = () => {{ echo.textContent = "websocket error"; }};
</script>
</body>
</html>
"""


def expected_bytes(n: int) -> bytes:
    """What ``GET /bytes?n=<n>`` sends."""
    return (_PATTERN * (n // len(_PATTERN) + 1))[:n]


async def page(_: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


async def echo_socket(request: web.Request) -> web.WebSocketResponse:
    connection = web.WebSocketResponse(protocols=("binary",), max_msg_size=MAX_FRAME)
    await connection.prepare(request)
    async for message in connection:
        if message.type == WSMsgType.TEXT:
            await connection.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            await connection.send_bytes(message.data)
    return connection


async def echo_body(request: web.Request) -> web.StreamResponse:
    kind = request.headers.get("Content-Type", "application/octet-stream")
    response = web.StreamResponse(headers={"Content-Type": kind})
    response.enable_chunked_encoding()
    await response.prepare(request)
    async for chunk in request.content.iter_chunked(CHUNK):
        await response.write(chunk)
    await response.write_eof()
    return response


async def some_bytes(request: web.Request) -> web.StreamResponse:
    text = request.query.get("n", "")
    if not text.isdigit() or int(text) > MAX_BYTES:
        raise web.HTTPBadRequest(text=f"n must be a whole number of bytes from 0 to {MAX_BYTES}, not {text!r}\n")
    left = int(text)
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = left
    await response.prepare(request)
    while left:
        await response.write(_PATTERN[: min(left, CHUNK)])
        left -= min(left, CHUNK)
    await response.write_eof()
    return response


async def whoami(request: web.Request) -> web.Response:
    local = request.transport.get_extra_info("sockname") if request.transport is not None else None
    port = local[1] if local else None
    return web.json_response({"user": getpass.getuser(), "host": socket.gethostname(), "port": port})


def init_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/ws", echo_socket)
    app.router.add_post("/echo", echo_body)
    app.router.add_get("/bytes", some_bytes)
    app.router.add_get("/whoami", whoami)
    return app


def listening_socket(host: str, port: int) -> socket.socket:
    try:
        listener = socket.create_server((host, port))
    except OSError as error:
        raise SystemExit(f"{MARKER}: cannot listen on {host}:{port}: {error.strerror}") from None
    listener.setblocking(False)
    return listener


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python3 -m ucim.testing.web_app", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, action="append", required=True, help="a port to serve (repeatable)")
    # Every interface by default: the provider's proxy reaches the job on its node's address.
    parser.add_argument("--host", default="0.0.0.0", help="the address to bind (default: all)")  # noqa: S104
    arguments = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
    # Bound before the app runs: a port that is taken fails here, with its number, before anything is served.
    sockets = [listening_socket(arguments.host, port) for port in arguments.port]
    logging.info("%s: user %s on %s, ports %s", MARKER, getpass.getuser(), socket.gethostname(), arguments.port)
    web.run_app(init_app(), sock=sockets, print=None, access_log_format='%a "%r" %s %b')


if __name__ == "__main__":
    main()
