"""Websocket frames relayed between a browser and an upstream socket (an instance's, a job server's)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
from aiohttp import WSMsgType, web


async def relay_frames(
    browser: web.WebSocketResponse,
    upstream: aiohttp.ClientWebSocketResponse,
    on_bytes: Callable[[str, int], None] = lambda _direction, _size: None,
) -> None:
    """Frames both ways, unread, until either side closes; then the other is closed too.

    ``on_bytes(direction, size)`` hears each data frame: ``"up"`` towards upstream, ``"down"`` towards the browser.
    """

    async def to_upstream() -> None:
        async for frame in browser:
            if frame.type == WSMsgType.TEXT:
                await upstream.send_str(frame.data)
                on_bytes("up", len(frame.data))
            elif frame.type == WSMsgType.BINARY:
                await upstream.send_bytes(frame.data)
                on_bytes("up", len(frame.data))

    async def to_browser() -> None:
        async for frame in upstream:
            if frame.type == WSMsgType.TEXT:
                await browser.send_str(frame.data)
                on_bytes("down", len(frame.data))
            elif frame.type == WSMsgType.BINARY:
                await browser.send_bytes(frame.data)
                on_bytes("down", len(frame.data))
        if upstream.close_code is not None:  # upstream's reason (no initialize, session ended) goes on
            await browser.close(code=upstream.close_code, message=b"")

    tasks = [asyncio.create_task(to_upstream()), asyncio.create_task(to_browser())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
