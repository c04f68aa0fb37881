"""Websocket frames relayed between a browser and an upstream socket (an instance's, a job server's)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
from aiohttp import WSMsgType, web

Socket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def relay_frames(
    browser: web.WebSocketResponse,
    upstream: aiohttp.ClientWebSocketResponse,
    on_bytes: Callable[[str, int], None] = lambda _direction, _size: None,
) -> None:
    """Frames both ways, unread, until either side closes; then the other is closed too.

    ``on_bytes(direction, size)`` hears each data frame: ``"up"`` towards upstream, ``"down"`` towards the browser.
    """

    async def pump(source: Socket, sink: Socket, direction: str) -> None:
        async for frame in source:
            if frame.type == WSMsgType.TEXT:
                await sink.send_str(frame.data)
            elif frame.type == WSMsgType.BINARY:
                await sink.send_bytes(frame.data)
            else:
                continue
            on_bytes(direction, len(frame.data))

    async def to_browser() -> None:
        await pump(upstream, browser, "down")
        if upstream.close_code is not None:  # upstream's reason (no initialize, session ended) goes on
            await browser.close(code=upstream.close_code, message=b"")

    tasks = [asyncio.create_task(pump(browser, upstream, "up")), asyncio.create_task(to_browser())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
