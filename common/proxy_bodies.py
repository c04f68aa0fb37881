"""How the proxies (gateway → bridge ingress → instance) hand bodies on.

A small body (Core's JSON calls and their answers, never a download) is read whole and sent on
in one write:
for a page of a browse that saves each hop the streaming machinery, which costs more than the
bytes. Anything larger, or of unknown length, streams (``ucim.common.splice`` moves large
request bodies without copying them).
"""

from __future__ import annotations

import aiohttp
from aiohttp import web

from ucim.common.splice import MIN_BYTES


def is_small(length: int | None) -> bool:
    """Small enough to be read whole: below what is worth a splice (``splice.MIN_BYTES``)."""
    return length is not None and length < MIN_BYTES


async def small_request_body(request: web.Request) -> bytes | None:
    """The whole body of a request whose Content-Length is small; None when it must stream."""
    return await request.read() if request.body_exists and is_small(request.content_length) else None


async def small_answer_body(request: web.Request, upstream: aiohttp.ClientResponse) -> bytes | None:
    """The whole body of a small answer to a call; None when it must stream.

    Answers to GET stream whatever their size: they are downloads, and a browser should have the
    first bytes of a file while the rest is on its way. Answers to HEAD, 204 and 304 have no body
    whatever their Content-Length says: they stream (nothing), so the length the caller sees stays.
    """
    if request.method in ("GET", "HEAD") or upstream.status in (204, 304) or not is_small(upstream.content_length):
        return None
    return await upstream.read()
