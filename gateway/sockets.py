"""The gateway's open websockets (follows, shells, web, VNC, folder uploads): counted by type, closed when it stops.

A websocket's handler runs until its peer closes, and aiohttp waits up to 60 s at shutdown for
running handlers, longer than Kubernetes' grace period: each open socket is closed first, with
1001 (going away), so Core and browsers reconnect at once (to another replica, or this one
restarted) instead of being cut off by SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Literal

from aiohttp import WSCloseCode, web

from ucim.gateway.keys import OPEN_SOCKETS
from ucim.gateway.metrics import SESSIONS_OPEN


@contextlib.asynccontextmanager
async def tracked(
    request: web.Request, socket: web.WebSocketResponse, kind: Literal["follow", "shell", "web", "vnc", "upload"]
) -> AsyncIterator[None]:
    """While open: counted in ``ucim_gateway_sessions_open`` and closed if the gateway stops."""
    sockets = request.config_dict[OPEN_SOCKETS]  # a job's web interface is served by a sub-application
    sockets.add(socket)
    SESSIONS_OPEN.labels(type=kind).inc()
    try:
        yield
    finally:
        sockets.discard(socket)
        SESSIONS_OPEN.labels(type=kind).dec()


async def close_open_sockets(app: web.Application) -> None:
    sockets = app[OPEN_SOCKETS].copy()  # each handler's exit removes its socket
    closing = [socket.close(code=WSCloseCode.GOING_AWAY, message=b"the gateway is stopping") for socket in sockets]
    await asyncio.gather(*closing, return_exceptions=True)


def setup_sockets(app: web.Application) -> None:
    app[OPEN_SOCKETS] = set()
    app.on_shutdown.append(close_open_sockets)
