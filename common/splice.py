"""Bodies moved straight from one socket to a file or another socket, with Linux ``splice(2)``.

Through aiohttp every byte of a body is copied from the kernel into Python, parsed, joined and
copied back: on a 2-core machine a 1 GiB upload spends most of its time there, three times over
(gateway, bridge, instance). ``splice`` moves the bytes socket → pipe → file or socket inside the
kernel instead. A request's body (:class:`SocketBody`, also as an outgoing request's payload:
:class:`SplicedPayload`) and an upstream answer's body (:class:`SocketAnswer`) can go this way.

:meth:`SocketBody.of` says whether a request's body can be taken this way: a plain (not TLS)
socket, a ``Content-Length`` of at least ``MIN_BYTES``, no ``Transfer-Encoding`` or
``Content-Encoding``, on Linux, in an app that ``enable``-d it.
Nothing changes until the body is actually moved (``to_file`` / ``to_socket``): a handler that
refuses the request first leaves the connection to aiohttp as usual. Once moved, what aiohttp
had already read is written first, aiohttp stops reading the socket, the rest goes by splice in
a worker thread, and the connection closes after the answer (aiohttp's parser still waits for
the bytes it never saw, so the connection cannot carry another request). An answer's upstream
connection closes for the same reason; the connection it is sent on stays usable.

The worker thread works on its own duplicate of the socket, so that aiohttp closing the
connection can never make it read from a reused descriptor; a cancelled caller stops it within
``POLL_SECONDS`` and waits for it before returning.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import select
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Final

from aiohttp import ClientPayloadError, ClientResponse, hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload

from ucim.common.file_writes import WRITE_BYTES, pwrite_all

PIPE_BYTES: Final = 1 << 20  # what one splice moves at most (a pipe holds 64 KiB unless asked)
# Smaller bodies are cheaper through aiohttp than through a worker thread (and keep the connection).
MIN_BYTES: Final = 256 << 10
POLL_SECONDS: Final = 0.25  # how soon a cancelled move notices
# A unix socket's send buffer stays at net.core.wmem_default (~208 KiB) unless asked, where TCP grows
# its own: a large body then crosses in many small steps, each a wake-up of both ends (an upload's
# bridge → instance hop ran at ~0.75x the speed it reaches with 4 MiB). The kernel caps it at net.core.wmem_max.
UNIX_SEND_BUFFER_BYTES: Final = 4 << 20
_SPLICE_FLAGS: Final = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)


class BodyStoppedError(Exception):
    """The body stopped before its end; ``moved`` bytes of it reached the destination."""

    def __init__(self, why: str, moved: int) -> None:
        super().__init__(why)
        self.moved = moved


class BodyEndedError(BodyStoppedError):
    """The sender closed the connection before the whole body arrived."""


class BodyIdleError(BodyStoppedError):
    """Nothing arrived (or nothing could be sent on) for the idle time."""


_MOVED: Final = web.RequestKey("ucim_body_moved_by_splice", bool)
_CLOSES: Final = web.AppKey("ucim_closes_after_splice", bool)


def enable(app: web.Application) -> None:
    """Let the app's handlers move bodies by splice: an answer after one says ``Connection: close``."""
    app[_CLOSES] = True
    app.on_response_prepare.append(_close_after_move)


async def _close_after_move(request: web.Request, response: web.StreamResponse) -> None:
    if request.get(_MOVED):
        response.force_close()
        response.headers[hdrs.CONNECTION] = "close"  # the headers are made before this hook runs


class SocketBody:
    """The body of one request, to be moved by splice; see the module's docstring."""

    def __init__(self, request: web.Request, length: int) -> None:
        self.request = request
        self.length = length
        self.moved = 0  # bytes that reached the destination, once a move ended (also stopped or cancelled)
        self._taken = False

    @classmethod
    def of(cls, request: web.BaseRequest) -> SocketBody | None:
        """The request's body as a SocketBody, or None when it must go through aiohttp."""
        transport = request.transport
        if not isinstance(request, web.Request) or not request.app.get(_CLOSES):
            return None  # the app does not close connections after a move: see enable()
        length = request.content_length
        if not _plain_socket(transport) or length is None or not _worth_a_splice(length, request.headers):
            return None
        return cls(request, length)

    async def to_file(self, fd: int, position: int, idle_seconds: float) -> int:
        """Write the body at ``position`` of the file ``fd``; the number of bytes written.

        Raises BodyStoppedError (with what was written) when the body does not all arrive.
        """
        return await self._move(_FileSink(fd, position), idle_seconds)

    async def to_socket(self, sink: int, idle_seconds: float) -> int:
        """Send the body on the non-blocking socket ``sink``; the number of bytes sent.

        Raises BodyStoppedError (with what was sent) when the body does not all arrive.
        """
        widen_send_buffer(sink)
        return await self._move(_SocketSink(sink), idle_seconds)

    def _ended(self, moved: int) -> None:
        self.moved = moved

    async def _move(self, sink: _FileSink | _SocketSink, idle_seconds: float) -> int:
        if self._taken:
            raise RuntimeError("a request body can be moved only once")
        self._taken = True
        request, transport = self.request, self.request.transport
        if transport is None:
            raise BodyEndedError("the sender closed the connection before the body was read", 0)
        # What aiohttp has read already; reading it may resume the transport, so pause afterwards.
        try:
            head = request.content.read_nowait(-1)
        except (ConnectionError, ClientPayloadError) as error:
            raise BodyEndedError(f"the connection broke before the body was read: {error}", 0) from error
        left = max(0, self.length - request.content.total_bytes)  # still on the socket
        if left:
            request.protocol.pause_reading()  # also keeps the reads above from resuming the transport
            transport.pause_reading()
            # After this request's answer the connection closes (its parser is out of step with the socket).
            request[_MOVED] = True
            request.protocol.close()
        try:
            return await _run(head, _socket_fd(transport), left, sink, idle_seconds, ended=self._ended)
        finally:
            request.content.feed_eof()  # aiohttp lingers on a body it thinks unread


class SplicedPayload(Payload):
    """A request's body as the body of an aiohttp client request: spliced into the outgoing connection.

    For a proxy: the incoming body goes on to the next hop without passing through Python. An
    outgoing connection with TLS cannot take a splice; then the body streams through aiohttp.
    ``on_sent`` hears how many bytes went on; ``started`` tells whether any of the body was taken.
    """

    def __init__(self, body: SocketBody, idle_seconds: float, on_sent: Callable[[int], None] | None = None) -> None:
        super().__init__(body, content_type=None)
        self._body = body
        self._size = body.length
        self._idle_seconds = idle_seconds
        self._on_sent = on_sent
        self.started = False

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a spliced body is sent, never decoded")

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        self.started = True
        transport = writer.transport
        if transport is None or not _plain_socket(transport):
            await self._stream(writer)
            return
        await _send_headers(writer, transport)
        try:
            await self._body.to_socket(_socket_fd(transport), self._idle_seconds)
        finally:  # also when aiohttp cancels the write because the answer came first
            self._count(self._body.moved)

    async def _stream(self, writer: AbstractStreamWriter) -> None:
        async for piece in self._body.request.content.iter_chunked(PIPE_BYTES):
            await writer.write(piece)
            self._count(len(piece))

    def _count(self, sent: int) -> None:
        if self._on_sent is not None and sent:
            self._on_sent(sent)


class SocketAnswer:
    """The body of an answer to aiohttp's client, to be spliced onto the connection of the request it answers.

    For a proxy's way back: the upstream's answer goes to the caller without passing through
    Python. The caller's connection stays usable (it carries exactly the announced body); the
    upstream connection closes, since its parser never saw the body.
    """

    def __init__(self, upstream: ClientResponse, length: int) -> None:
        self.upstream = upstream
        self.length = length

    @classmethod
    def of(cls, request: web.BaseRequest, upstream: ClientResponse) -> SocketAnswer | None:
        """The upstream's answer body as a SocketAnswer, or None when it must stream through aiohttp."""
        connection = upstream.connection
        length = upstream.content_length
        if (
            request.method == "HEAD"
            or upstream.status in (204, 304)
            or connection is None
            or not _plain_socket(connection.transport)
            or not _plain_socket(request.transport)
            or length is None
            or not _worth_a_splice(length, upstream.headers)
        ):
            return None
        return cls(upstream, length)

    async def send(self, request: web.BaseRequest, response: web.StreamResponse, idle_seconds: float) -> int:
        """Send ``response`` (prepared here), its body spliced from the upstream; the body bytes sent.

        Raises BodyStoppedError (with what was sent) when the upstream's body does not all arrive,
        OSError when the caller goes away.
        """
        upstream, connection = self.upstream, self.upstream.connection
        try:
            writer = await response.prepare(request)
            if (
                connection is None
                or connection.protocol is None
                or connection.transport is None
                or writer is None
                or request.transport is None
            ):
                raise BodyEndedError("a connection closed before the answer was sent", 0)
            await _send_headers(writer, request.transport)
            head = upstream.content.read_nowait(-1)
            left = max(0, self.length - upstream.content.total_bytes)  # still on the upstream's socket
            if left:
                connection.protocol.pause_reading()  # also keeps the read above from resuming the transport
                connection.transport.pause_reading()
            sink = _SocketSink(_socket_fd(request.transport))
            sent = await _run(head, _socket_fd(connection.transport), left, sink, idle_seconds)
        finally:
            upstream.close()  # its parser never saw the body: the connection cannot carry another answer
        await response.write_eof()
        return sent


async def socket_to_file(source: int, count: int, fd: int, position: int, idle_seconds: float) -> int:
    """``count`` bytes of the non-blocking socket ``source`` into ``fd`` at ``position``.

    For a client that reads an answer's body itself; raises BodyStoppedError when it stops early.
    """
    return await _run(b"", source, count, _FileSink(fd, position), idle_seconds)


def _worth_a_splice(length: int, headers: Mapping[str, str]) -> bool:
    """A body large enough, sent as it is (no chunked framing, no compression) for its length to be its bytes."""
    return length >= MIN_BYTES and hdrs.TRANSFER_ENCODING not in headers and hdrs.CONTENT_ENCODING not in headers


def widen_send_buffer(fd: int) -> None:
    """Give the socket ``fd``, if a unix one, a send buffer fit for large bodies (UNIX_SEND_BUFFER_BYTES)."""
    with socket.socket(fileno=os.dup(fd)) as sock:  # options belong to the socket: a duplicate sets them
        if (
            sock.family == socket.AF_UNIX
            and sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < UNIX_SEND_BUFFER_BYTES
        ):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UNIX_SEND_BUFFER_BYTES)


def _plain_socket(transport: asyncio.BaseTransport | None) -> bool:
    """A transport on a socket without TLS, on a system with splice: what a splice can use."""
    return (
        hasattr(os, "splice")
        and transport is not None
        and transport.get_extra_info("sslcontext") is None
        and transport.get_extra_info("socket") is not None
    )


def _socket_fd(transport: asyncio.BaseTransport) -> int:
    fd: int = transport.get_extra_info("socket").fileno()
    return fd


async def _send_headers(writer: AbstractStreamWriter, transport: asyncio.BaseTransport) -> None:
    """aiohttp's buffered headers on the wire, so that a splice can follow them."""
    send_headers = getattr(writer, "send_headers", None)
    if send_headers is not None:  # aiohttp holds them back to send them with the first piece of a body
        send_headers()
    # A socket takes a few hundred bytes at once, so this almost never waits; asyncio tells no one
    # when its buffer empties, hence the poll.
    while transport.get_write_buffer_size():  # type: ignore[attr-defined]  # noqa: ASYNC110
        await asyncio.sleep(0.001)


async def _run(
    head: bytes,
    source: int,
    left: int,
    sink: _FileSink | _SocketSink,
    idle_seconds: float,
    *,
    ended: Callable[[int], None] | None = None,
) -> int:
    """``_move`` in a worker thread; a cancelled caller stops it and waits for it.

    ``ended`` hears how many bytes reached the sink once the thread is done, however it ended: a
    caller cancelled after the last byte went (aiohttp's client, once the answer came) still counts it.

    The thread works on duplicates of the socket ``source`` and of a socket sink, and closes them
    itself: aiohttp closing a connection can never make it use a descriptor number reused since.
    """
    owned_source = os.dup(source)
    try:
        owned_sink = sink.duplicate()
    except BaseException:
        os.close(owned_source)
        raise
    stop = threading.Event()
    waits = _Waits(idle_seconds, stop)
    moving = asyncio.ensure_future(asyncio.to_thread(_move, head, owned_source, left, owned_sink, waits))
    try:
        return await asyncio.shield(moving)
    except asyncio.CancelledError:
        stop.set()
        await asyncio.wait([moving])  # the thread holds fds the caller is about to close
        raise
    finally:
        if ended is not None and moving.done():
            ended(_moved_by(moving))


def _moved_by(thread: asyncio.Future[int]) -> int:
    error = thread.exception()
    if error is None:
        return thread.result()
    return error.moved if isinstance(error, BodyStoppedError) else 0


# --- the worker thread's side -------------------------------------------------------------


class _Waits:
    """How long the thread may wait for either socket, and the flag that stops it."""

    def __init__(self, idle_seconds: float, stop: threading.Event) -> None:
        self.idle_seconds = idle_seconds
        self.stop = stop

    def until_ready(self, fd: int, event: int, moved: int, what: str) -> None:
        """Until ``fd`` is ready for ``event``; BodyIdleError after the idle time, BodyStoppedError once stopped."""
        poller = select.poll()
        poller.register(fd, event)
        waited = 0.0
        while not poller.poll(POLL_SECONDS * 1000):
            if self.stop.is_set():
                raise BodyStoppedError("the transfer was cancelled", moved)
            waited += POLL_SECONDS
            if waited >= self.idle_seconds:
                raise BodyIdleError(f"{what} for {self.idle_seconds:g} s", moved)


class _FileSink:
    """The caller's file: the caller closes it (once the thread is done)."""

    def __init__(self, fd: int, position: int) -> None:
        self.fd, self.position = fd, position

    def duplicate(self) -> _FileSink:
        return self  # the file stays the caller's

    def close(self) -> None:
        pass

    def write(self, data: memoryview, moved: int, waits: _Waits) -> int:
        return pwrite_all(self.fd, [data], self.position + moved)

    def splice(self, pipe: int, count: int, moved: int, waits: _Waits) -> int:
        # Into a file a splice never waits; a short one is the disk's (ENOSPC raises). In pieces of
        # at most WRITE_BYTES, as ucim.common.file_writes explains.
        return os.splice(pipe, self.fd, min(count, WRITE_BYTES), offset_dst=self.position + moved)


class _SocketSink:
    """A socket to send on; the thread works on its own duplicate (``duplicate``) and closes it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def duplicate(self) -> _SocketSink:
        return _SocketSink(os.dup(self.fd))

    def close(self) -> None:
        os.close(self.fd)

    def write(self, data: memoryview, moved: int, waits: _Waits) -> int:
        try:
            return os.write(self.fd, data)
        except BlockingIOError:
            waits.until_ready(self.fd, select.POLLOUT, moved, "the receiver took nothing")
            return 0

    def splice(self, pipe: int, count: int, moved: int, waits: _Waits) -> int:
        try:
            return os.splice(pipe, self.fd, count, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            waits.until_ready(self.fd, select.POLLOUT, moved, "the receiver took nothing")
            return 0


def _pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    with contextlib.suppress(OSError):  # the system's pipe-max-size may be lower: keep the default
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    return read_end, write_end


def _move(head: bytes, source: int, left: int, sink: _FileSink | _SocketSink, waits: _Waits) -> int:
    """``head``, then ``left`` bytes of the socket ``source``, into ``sink`` (this closes both); how many."""
    try:
        moved = 0
        view = memoryview(head)
        while moved < len(view):
            moved += sink.write(view[moved:], moved, waits)
        pipe_out, pipe_in = _pipe()
        try:
            while left > 0:
                try:
                    in_pipe = os.splice(source, pipe_in, min(left, PIPE_BYTES), flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    waits.until_ready(source, select.POLLIN, moved, "no data arrived")
                    continue
                if in_pipe == 0:
                    raise BodyEndedError("the sender closed the connection before the end of the body", moved)
                left -= in_pipe
                while in_pipe:
                    count = sink.splice(pipe_out, in_pipe, moved, waits)
                    moved += count
                    in_pipe -= count
        finally:
            os.close(pipe_out)
            os.close(pipe_in)
        return moved
    finally:
        os.close(source)
        sink.close()
