"""Two bare aiohttp relays in front of an instance's socket: what any two Python hops add on this machine.

The gateway and the bridge ingress are two relays in front of a user's instance; what they
add to a browse is their own work plus what any relay costs here (an aiohttp server, an
aiohttp client, two more processes to wake). These relays do only the second part: read the
request, send it on with one client session, answer with what came back. They run like the
real ones (their own processes, uvloop, a TCP hop then a unix socket hop), so the browse
bench can show the floor next to what ucim adds.

    python -m bench.bare_relays unix:/path/to/instance.sock      # prints the port it listens on
    python -m bench.bare_relays http://127.0.0.1:PORT
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import aiohttp
from aiohttp import web

from ucim.common.event_loops import run_relay

# What a relay passes on of the caller's headers (the bench's browse needs no more).
PASSED: Final = ("Content-Type", "Authorization")


def relay_app(target: str) -> web.Application:
    """One catch-all route that sends every request on to ``target`` (``unix:<path>`` or an http origin)."""
    if target.startswith("unix:"):
        connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=target.removeprefix("unix:"))
        origin = "http://instance"
    else:
        connector, origin = aiohttp.TCPConnector(limit=0), target.rstrip("/")
    client = web.AppKey("client", aiohttp.ClientSession)

    async def forward(request: web.Request) -> web.Response:
        headers = {name: request.headers[name] for name in PASSED if name in request.headers}
        session = request.app[client]
        async with session.request(
            request.method, origin + request.path_qs, data=await request.read(), headers=headers
        ) as answer:
            body = await answer.read()
            return web.Response(status=answer.status, body=body, content_type=answer.content_type)

    async def session(app: web.Application) -> AsyncIterator[None]:
        app[client] = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        yield
        await app[client].close()

    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def serve(target: str) -> None:
    runner = web.AppRunner(relay_app(target), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(port, flush=True)  # the parent waits for this line
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


async def _start(target: str) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.bare_relays", target, stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).parents[1]
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(20):
            line = await process.stdout.readline()
        return process, f"http://127.0.0.1:{int(line)}"
    except BaseException:
        process.kill()
        await process.wait()
        raise


@contextlib.asynccontextmanager
async def bare_relays(instance_socket: str) -> AsyncIterator[str]:
    """Two relays, TCP → TCP → the instance's unix socket; the outer one's origin."""
    processes: list[asyncio.subprocess.Process] = []
    try:
        inner, inner_url = await _start(f"unix:{instance_socket}")
        processes.append(inner)
        outer, outer_url = await _start(inner_url)
        processes.append(outer)
        yield outer_url
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            await process.wait()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with contextlib.suppress(KeyboardInterrupt):
        run_relay(serve(sys.argv[1]))
