"""How the proxies (gateway → bridge ingress → instance) hand bodies on, both ways.

A small body (Core's JSON calls and their answers, never a download) is read whole and sent on
in one write: for a page of a browse that saves each hop the streaming machinery, which costs
more than the bytes. A large answer is spliced back socket to socket where both are plain
(``ucim.common.splice``, which also moves large request bodies); anything else streams in
pieces of PIECE_BYTES.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Final

import aiohttp
from aiohttp import web

from ucim.common.splice import MIN_BYTES, BodyStoppedError, SocketAnswer, SocketBody, SplicedPayload

log = logging.getLogger(__name__)

PIECE_BYTES: Final = 1 << 20  # what a streamed body is read in, at most
# What breaks an answer on its way: the upstream's connection, a splice, or the caller's connection.
BROKEN: Final = (aiohttp.ClientError, TimeoutError, BodyStoppedError, OSError)


class AnswerBrokenError(Exception):
    """An answer broke off after it began: the caller's connection must break, no error can follow."""


def is_small(length: int | None) -> bool:
    """Small enough to be read whole: below what is worth a splice (``splice.MIN_BYTES``)."""
    return length is not None and length < MIN_BYTES


async def forwarded_body(
    request: web.Request, idle_seconds: float
) -> bytes | SplicedPayload | AsyncIterator[bytes] | None:
    """The request's body for the next hop: a small one whole; a large one spliced where the app
    ``splice.enable``-d it (``idle_seconds`` bounds its silence); else a stream of pieces. None without one."""
    if not request.body_exists:
        return None
    if is_small(request.content_length):
        return await request.read()
    socket_body = SocketBody.of(request)
    return pieces(request) if socket_body is None else SplicedPayload(socket_body, idle_seconds)


async def pieces(request: web.Request, on_piece: Callable[[int], None] | None = None) -> AsyncIterator[bytes]:
    """The request's body as it arrives; ``on_piece`` hears each piece's length."""
    async for piece in request.content.iter_chunked(PIECE_BYTES):
        if on_piece is not None:
            on_piece(len(piece))
        yield piece


async def small_answer_body(request: web.Request, upstream: aiohttp.ClientResponse) -> bytes | None:
    """The whole body of a small answer to a call; None when it must stream.

    Answers to GET stream whatever their size: they are downloads, and a browser should have the
    first bytes of a file while the rest is on its way. Answers to HEAD, 204 and 304 have no body
    whatever their Content-Length says: they stream (nothing), so the length the caller sees stays.
    """
    if request.method in ("GET", "HEAD") or upstream.status in (204, 304) or not is_small(upstream.content_length):
        return None
    return await upstream.read()


async def pass_back(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    headers: Mapping[str, str],
    *,
    idle_seconds: float,
    on_sent: Callable[[int], None] | None = None,
) -> web.StreamResponse:
    """The upstream's answer to the caller with ``headers``: a small one whole, a large one spliced, others streamed.

    ``idle_seconds`` bounds a splice's silence; ``on_sent`` hears how many body bytes went. An
    error before the answer began is raised as it is (the caller may still answer with an error);
    after, AnswerBrokenError, so that a truncated body is never taken for a whole one.
    """
    count = on_sent or (lambda _: None)
    small = await small_answer_body(request, upstream)
    if small is not None:
        upstream.release()
        count(len(small))
        return web.Response(status=upstream.status, reason=upstream.reason, body=small, headers=headers)
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    try:
        spliced = SocketAnswer.of(request, upstream)
        if spliced is not None:
            count(await spliced.send(request, response, idle_seconds))
            return response
        await response.prepare(request)
        async for piece in upstream.content.iter_chunked(PIECE_BYTES):
            await response.write(piece)
            count(len(piece))
        await response.write_eof()
    except BROKEN as error:
        upstream.close()
        if not response.prepared:
            raise
        log.warning("an answer broke off", extra={"path": request.path, "error": str(error) or type(error).__name__})
        raise AnswerBrokenError(f"the answer broke off: {error}") from error
    upstream.release()
    return response
