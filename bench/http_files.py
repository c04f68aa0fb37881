"""The bench's browser: uploads whose chunks go out by sendfile, downloads that come in by splice.

A real browser runs on a machine of its own. Here it shares the 2 CPUs with what it measures,
and a client that copies every byte through Python (read the file, buffer, send; receive,
buffer, write) spends as much CPU as the servers it times. So the kernel moves the bytes:
``sendfile`` from the page cache to the socket for a chunk, ``splice`` from the socket to the
file for a download (``ucim.common.splice``). HTTP/1.1 framing is h11's (a sans-I/O protocol
library): the requests are written as h11 makes them, answers parsed by it, and a body moved
by the kernel is exactly the length h11 was told. A kept-alive connection is used again; one
the server closes, or whose answer was spliced past h11, is made anew.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import h11

from ucim.common.splice import socket_to_file

READ_BYTES: Final = 1 << 16  # of an answer's head at a time
IDLE_SECONDS: Final = 120.0  # a download that stops this long fails


@dataclass(frozen=True)
class FileRange:
    """``count`` bytes of the open file ``fd`` from ``offset``: the body of one chunk (h11 takes its len)."""

    fd: int
    offset: int
    count: int

    def __len__(self) -> int:
        return self.count


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes  # an error's body; empty for a download that went to its file
    stored: int = 0  # bytes of a download written to its file


class HttpFiles:
    """Requests to one ``http://`` origin on one connection while the server keeps it."""

    def __init__(self, origin: str) -> None:
        parts = urlsplit(origin)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"the bench's client speaks plain http to a host, not {origin!r}")
        self.address = (parts.hostname, parts.port or 80)
        self.netloc = parts.netloc
        self._socket: socket.socket | None = None
        self._h11 = h11.Connection(our_role=h11.CLIENT)
        self._length: int | None = None  # the Content-Length of the answer being read

    async def post(self, target: str, headers: Mapping[str, str], body: FileRange) -> Answer:
        """``POST target`` (path and query) with ``body`` sent by sendfile; the answer, read whole."""
        return await self._exchange(lambda: self._post(target, headers, body))

    async def get_to(self, target: str, fd: int) -> Answer:
        """``GET target``; a 200's body spliced into ``fd`` (from its offset 0), any other answer read whole."""
        return await self._exchange(lambda: self._get_to(target, fd))

    async def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    # --- one request and its answer ---

    async def _exchange(self, work: Callable[[], Awaitable[Answer]]) -> Answer:
        try:
            answer = await work()
        except BaseException:
            await self.close()  # a connection left halfway through an exchange is of no more use
            raise
        connection = self._h11
        if self._socket is None or connection.our_state is h11.MUST_CLOSE or connection.their_state is h11.MUST_CLOSE:
            await self.close()
        else:
            connection.start_next_cycle()
        return answer

    async def _post(self, target: str, headers: Mapping[str, str], body: FileRange) -> Answer:
        sock = await self._connection()
        loop, connection = asyncio.get_running_loop(), self._h11
        fields = [("Host", self.netloc), ("Content-Length", str(body.count)), *headers.items()]
        await loop.sock_sendall(sock, connection.send(h11.Request(method="POST", target=target, headers=fields)) or b"")
        if body.count:  # (a sendfile of 0 bytes would mean "to the end of the file")
            # With Content-Length framing h11 passes the body through as it is: sendfile it.
            connection.send_with_data_passthrough(h11.Data(data=body))  # type: ignore[arg-type]  # h11 takes len()
            with os.fdopen(os.dup(body.fd), "rb") as source:
                await loop.sock_sendfile(sock, source, body.offset, body.count)
        connection.send(h11.EndOfMessage())
        status = await self._head(sock)
        return Answer(status, await self._rest(sock))

    async def _get_to(self, target: str, fd: int) -> Answer:
        sock = await self._connection()
        loop, connection = asyncio.get_running_loop(), self._h11
        request = h11.Request(method="GET", target=target, headers=[("Host", self.netloc)])
        await loop.sock_sendall(sock, (connection.send(request) or b"") + (connection.send(h11.EndOfMessage()) or b""))
        status, length = await self._head(sock), self._length
        if status != 200 or length is None:
            return Answer(status, await self._rest(sock))
        stored = 0
        while isinstance(event := connection.next_event(), h11.Data):  # what came with the head
            stored += os.pwrite(fd, event.data, stored)
        if stored < length:
            stored += await socket_to_file(sock.fileno(), length - stored, fd, stored, IDLE_SECONDS)
            await self.close()  # h11 never saw the spliced bytes: this connection is out of step
        return Answer(status, b"", stored)

    async def _head(self, sock: socket.socket) -> int:
        """Until the answer's head; its status (``_length``: its Content-Length, if any)."""
        connection = self._h11
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await asyncio.get_running_loop().sock_recv(sock, READ_BYTES))
            elif isinstance(event, h11.Response):
                lengths = [int(value) for name, value in event.headers if name == b"content-length"]
                self._length = lengths[0] if lengths else None
                return event.status_code
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("the server closed the connection before it answered")

    async def _rest(self, sock: socket.socket) -> bytes:
        """The rest of the answer's body, read whole."""
        connection, body = self._h11, bytearray()
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await asyncio.get_running_loop().sock_recv(sock, READ_BYTES))
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("the server closed the connection before its answer ended")

    async def _connection(self) -> socket.socket:
        if self._socket is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                await asyncio.get_running_loop().sock_connect(sock, self.address)
            except BaseException:
                sock.close()
                raise
            self._socket = sock
            self._h11 = h11.Connection(our_role=h11.CLIENT)
        return self._socket
