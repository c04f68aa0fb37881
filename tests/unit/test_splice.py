"""ucim.common.splice: request bodies moved by splice(2), on real sockets of aiohttp test servers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from tests.support.certificates import self_signed
from ucim.common import splice
from ucim.common.splice import (
    BodyEndedError,
    BodyIdleError,
    BodyStoppedError,
    SocketAnswer,
    SocketBody,
    SplicedPayload,
)

pytestmark = pytest.mark.relay_loops  # the proxies splice on uvloop, the instances on asyncio's loop

MIB = 1 << 20
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve(aiohttp_server: AiohttpServer, handler: Handler, *, enabled: bool = True) -> TestServer:
    app = web.Application(client_max_size=0)
    if enabled:
        splice.enable(app)
    app.router.add_post("/body", handler)
    return await aiohttp_server(app)


def into_file(path: Path, outcome: dict[str, Any], idle_seconds: float = 5.0) -> Handler:
    """A handler that moves the body into ``path`` and notes what happened in ``outcome``."""
    outcome["done"] = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        body = SocketBody.of(request)
        outcome["spliced"] = body is not None
        if body is None:
            path.write_bytes(await request.read())
            return web.json_response({"moved": request.content_length})
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            outcome["moved"] = await body.to_file(fd, 0, idle_seconds)
        except BodyStoppedError as stopped:
            outcome["error"], outcome["moved"] = stopped, stopped.moved
            return web.json_response({"moved": stopped.moved}, status=400)
        finally:
            os.close(fd)
            outcome["done"].set()
        return web.json_response({"moved": outcome["moved"]})

    return handle


def raw_request(server: TestServer, length: int, sent: bytes) -> socket.socket:
    """A connection that announces ``length`` bytes of body and sends only ``sent``; the caller closes it."""
    assert server.port is not None
    connection = socket.create_connection(("127.0.0.1", server.port))
    connection.sendall(f"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode() + sent)
    return connection


async def finished(outcome: dict[str, Any]) -> None:
    async with asyncio.timeout(10):
        await outcome["done"].wait()


async def test_a_large_body_goes_into_the_file_whole_and_the_connection_closes_after(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    outcome: dict[str, Any] = {}
    server = await serve(aiohttp_server, into_file(tmp_path / "stored", outcome))
    data = os.urandom(3 * MIB + 17)
    async with aiohttp.ClientSession() as session:
        for _ in range(2):  # the second request needs a fresh connection: the first one closed
            async with session.post(server.make_url("/body"), data=data) as response:
                assert (response.status, await response.json()) == (200, {"moved": len(data)})
                assert response.headers["Connection"] == "close"
            assert outcome["spliced"]
            assert (tmp_path / "stored").read_bytes() == data


async def test_small_bodies_chunked_bodies_and_apps_without_enable_go_through_aiohttp(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    outcome: dict[str, Any] = {}

    async def chunked() -> AsyncIterator[bytes]:
        yield os.urandom(MIB)

    enabled = await serve(aiohttp_server, into_file(tmp_path / "a", outcome))
    not_enabled = await serve(aiohttp_server, into_file(tmp_path / "b", outcome), enabled=False)
    async with aiohttp.ClientSession() as session:
        for server, data in ((enabled, b"x" * (splice.MIN_BYTES - 1)), (enabled, chunked()), (not_enabled, b"y" * MIB)):
            async with session.post(server.make_url("/body"), data=data) as response:
                assert response.status == 200
                assert "close" not in response.headers.get("Connection", "")
            assert outcome["spliced"] is False


async def test_a_body_cut_off_keeps_exactly_what_arrived(aiohttp_server: AiohttpServer, tmp_path: Path) -> None:
    outcome: dict[str, Any] = {}
    server = await serve(aiohttp_server, into_file(tmp_path / "stored", outcome))
    sent = os.urandom(MIB + 5)
    connection = await asyncio.to_thread(raw_request, server, 4 * MIB, sent)
    await asyncio.sleep(0.2)
    connection.close()
    await finished(outcome)
    assert isinstance(outcome["error"], BodyEndedError)
    assert outcome["moved"] == len(sent)
    assert (tmp_path / "stored").read_bytes() == sent


async def test_a_silent_sender_is_cut_off_after_the_idle_time(aiohttp_server: AiohttpServer, tmp_path: Path) -> None:
    outcome: dict[str, Any] = {}
    server = await serve(aiohttp_server, into_file(tmp_path / "stored", outcome, idle_seconds=0.5))
    sent = os.urandom(512 << 10)
    connection = await asyncio.to_thread(raw_request, server, 2 * MIB, sent)
    try:
        await finished(outcome)
    finally:
        connection.close()
    assert isinstance(outcome["error"], BodyIdleError)
    assert "0.5 s" in str(outcome["error"])
    assert (outcome["moved"], (tmp_path / "stored").read_bytes()) == (len(sent), sent)


async def test_a_cancelled_move_stops_its_thread_before_it_returns(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    outcome: dict[str, Any] = {"done": asyncio.Event()}

    async def handle(request: web.Request) -> web.Response:
        body = SocketBody.of(request)
        assert body is not None
        fd = os.open(tmp_path / "stored", os.O_WRONLY | os.O_CREAT, 0o600)
        started = time.monotonic()
        try:
            async with asyncio.timeout(0.3):
                await body.to_file(fd, 0, idle_seconds=60)
        except TimeoutError:
            outcome["stopped_after"] = time.monotonic() - started
        finally:
            os.close(fd)
            outcome["done"].set()
        return web.json_response({})

    server = await serve(aiohttp_server, handle)
    first = b"z" * (300 << 10)
    connection = await asyncio.to_thread(raw_request, server, 2 * MIB, first)
    try:
        await finished(outcome)
        assert outcome["stopped_after"] < 0.3 + 2 * splice.POLL_SECONDS
        # The thread is gone: what comes after the cancellation is written nowhere.
        await asyncio.to_thread(connection.sendall, b"after" * 1000)
        await asyncio.sleep(2 * splice.POLL_SECONDS)
    finally:
        connection.close()
    assert (tmp_path / "stored").read_bytes() == first


async def test_a_proxy_splices_the_body_into_its_own_request(aiohttp_server: AiohttpServer) -> None:
    async def upstream_handle(request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        async for piece in request.content.iter_any():
            digest.update(piece)
        return web.json_response({"sha256": digest.hexdigest(), "length": request.content_length})

    upstream = await serve(aiohttp_server, upstream_handle, enabled=False)
    counted: list[int] = []

    async def proxy_handle(request: web.Request) -> web.Response:
        body = SocketBody.of(request)
        assert body is not None
        payload = SplicedPayload(body, 5.0, counted.append)
        async with aiohttp.ClientSession() as session, session.post(upstream.make_url("/body"), data=payload) as answer:
            assert payload.started
            return web.json_response(await answer.json())

    proxy = await serve(aiohttp_server, proxy_handle)
    data = os.urandom(5 * MIB + 3)
    async with aiohttp.ClientSession() as session, session.post(proxy.make_url("/body"), data=data) as response:
        assert await response.json() == {"sha256": hashlib.sha256(data).hexdigest(), "length": len(data)}
    assert sum(counted) == len(data)


def test_a_unix_socket_gets_a_wide_send_buffer_and_tcp_keeps_its_own() -> None:
    unix, peer = socket.socketpair(socket.AF_UNIX)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        tcp_before = tcp.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        splice.widen_send_buffer(unix.fileno())
        splice.widen_send_buffer(tcp.fileno())
        cap = int(Path("/proc/sys/net/core/wmem_max").read_text())
        # The kernel keeps twice what it is given (for its own bookkeeping), at most twice wmem_max.
        assert unix.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * min(splice.UNIX_SEND_BUFFER_BYTES, cap)
        assert tcp.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == tcp_before
    finally:
        for sock in (unix, peer, tcp):
            sock.close()


async def test_a_body_over_tls_goes_through_aiohttp(aiohttp_server: AiohttpServer, tmp_path: Path) -> None:
    outcome: dict[str, Any] = {}
    app = web.Application(client_max_size=0)
    splice.enable(app)
    app.router.add_post("/body", into_file(tmp_path / "stored", outcome))
    server = await aiohttp_server(app, ssl=self_signed(tmp_path))
    data = os.urandom(2 * MIB)
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.make_url("/body"), data=data, ssl=False) as response,
    ):
        assert response.status == 200
    assert outcome["spliced"] is False
    assert (tmp_path / "stored").read_bytes() == data


def answer_proxy(upstream_url: str, outcome: dict[str, Any]) -> Handler:
    """A handler that GETs ``upstream_url`` and passes its answer back by SocketAnswer."""
    outcome["done"] = asyncio.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        async with aiohttp.ClientSession() as session, session.get(upstream_url) as upstream:
            answer = SocketAnswer.of(request, upstream)
            outcome["spliced"] = answer is not None
            assert answer is not None
            response = web.StreamResponse(headers={"Content-Length": str(upstream.content_length)})
            try:
                outcome["sent"] = await answer.send(request, response, idle_seconds=5)
            except BodyStoppedError as stopped:
                outcome["error"] = stopped
                raise
            finally:
                outcome["done"].set()  # the caller may have the whole answer before send() returns
            return response

    return handle


async def behind_a_proxy(aiohttp_server: AiohttpServer, handler: Handler, outcome: dict[str, Any]) -> TestServer:
    """``GET /file`` served by ``handler``, behind an ``answer_proxy``; the proxy's server."""
    upstream_app = web.Application()
    upstream_app.router.add_get("/file", handler)
    upstream = await aiohttp_server(upstream_app)
    proxy_app = web.Application()
    proxy_app.router.add_get("/file", answer_proxy(str(upstream.make_url("/file")), outcome))
    return await aiohttp_server(proxy_app)


async def test_an_answer_is_spliced_back_and_the_callers_connection_stays_usable(
    aiohttp_server: AiohttpServer,
) -> None:
    data = os.urandom(3 * MIB + 11)

    async def file(_: web.Request) -> web.Response:
        return web.Response(body=data)

    outcome: dict[str, Any] = {}
    proxy = await behind_a_proxy(aiohttp_server, file, outcome)
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(2):  # the same kept-alive connection carries both
            async with session.get(proxy.make_url("/file")) as response:
                assert await response.read() == data
                assert response.headers.get("Connection", "keep-alive") != "close"
            await finished(outcome)
            assert outcome["spliced"] and outcome["sent"] == len(data)
            outcome["done"].clear()


async def test_an_answer_that_breaks_off_breaks_the_callers_connection(aiohttp_server: AiohttpServer) -> None:
    sent = os.urandom(MIB)

    async def broken(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(4 * MIB)})
        await response.prepare(request)
        await response.write(sent)
        assert request.transport is not None
        request.transport.close()
        return response

    outcome: dict[str, Any] = {}
    proxy = await behind_a_proxy(aiohttp_server, broken, outcome)
    async with aiohttp.ClientSession() as session, session.get(proxy.make_url("/file")) as response:
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    await finished(outcome)
    assert isinstance(outcome["error"], BodyEndedError)
    assert outcome["error"].moved == len(sent)
