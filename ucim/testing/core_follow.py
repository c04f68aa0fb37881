"""Core's side of the log follow websocket, as core2 dials it (``C2/orchestrator/job.go`` ~L1340-1395).

``follow_frames`` yields every text frame the provider sends, parsed, until the provider's response
frame (the end, or a refusal) or the socket closes, and then closes it (core2 would keep reading
until the browser leaves); ``log_text`` joins the log messages of a rank and stream.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

import aiohttp

from ucim.common.follow_frames import follow_call
from ucim.common.protocol import Job, dump


class FollowRefusedError(Exception):
    """The provider refused the follow before the upgrade (an HTTP status) or in a response frame."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(f"{status}: {why}")
        self.status = status
        self.why = why


async def follow_frames(
    session: aiohttp.ClientSession, url: str, token: str, provider_id: str, job: Job
) -> AsyncIterator[dict[str, Any]]:
    """The frames of one follow of ``job``; ``url`` carries ``usernameHint``. Ends after a response frame."""
    try:
        socket = await session.ws_connect(url, headers={"Authorization": f"Bearer {token}"}, heartbeat=None)
    except aiohttp.WSServerHandshakeError as error:
        raise FollowRefusedError(error.status, error.message) from error
    async with socket:
        request = {"call": follow_call(provider_id), "streamId": "0", "payload": {"type": "init", "job": dump(job)}}
        await socket.send_str(json.dumps({**request, "bearer": "", "project": None}))
        async for message in socket:
            if message.type != aiohttp.WSMsgType.TEXT:
                return  # Core stops at a non-text frame
            frame: dict[str, Any] = json.loads(message.data)
            yield frame
            if frame.get("type") == "response":
                return


def log_text(frames: Iterable[dict[str, Any]], rank: int = 0, stream: str = "stdout") -> str:
    """What Core shows of one rank's stream: the log messages' text, in order."""
    return "".join(
        frame["payload"][stream] or ""
        for frame in frames
        if frame.get("type") == "message" and frame["payload"].get("rank") == rank
    )
