"""The bridge ingress: token, routing, streaming both ways, what it forwards and what it does not."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import h11
import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from pydantic import SecretStr
from pytest_aiohttp import AiohttpClient, AiohttpServer

from tests.support.certificates import self_signed, trusting
from ucim.gateway.tunnel_connector import TunnelConnector, TunnelRefusedError
from ucim.slurm_bridge.ingress import Routes, init_app
from ucim.testing.stack import free_port

pytestmark = pytest.mark.relay_loops  # the gateway and the bridge run on uvloop

TOKEN = "a-token-that-is-long-enough"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def echo(request: web.Request) -> web.StreamResponse:
    """What the instance saw, or the body back (streamed) for /upload."""
    if request.path == "/upload":
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_chunked(1 << 16):
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"size": size, "sha256": digest.hexdigest()})
    if request.path == "/download":
        response = web.StreamResponse(headers={"X-Instance": "yes"})
        await response.prepare(request)
        for _ in range(64):
            await response.write(b"x" * 65536)
        await response.write_eof()
        return response
    if request.path == "/teapot":
        return web.json_response({"why": "short and stout"}, status=418)
    return web.json_response(
        {
            "method": request.method,
            "path": request.raw_path,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": (await request.read()).decode(),
        }
    )


@pytest.fixture
async def instance_socket(tmp_path: Path) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    path = str(tmp_path / "instance.sock")
    await web.UnixSite(runner, path).start()
    yield path
    await runner.cleanup()


@pytest.fixture
async def routes() -> AsyncIterator[Routes]:
    table = Routes()
    yield table
    await table.close_all()


async def test_every_request_needs_the_token(aiohttp_client: AiohttpClient, routes: Routes) -> None:
    client = await aiohttp_client(init_app(routes, SecretStr(TOKEN)))
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
    ):
        for path in ("/instances/x/healthz", "/", "/metrics"):
            response = await client.get(path, headers=headers)
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert (await response.json())["why"] == "A valid ingress token is required"


async def test_unknown_and_stopped_instances(aiohttp_client: AiohttpClient, routes: Routes) -> None:
    client = await aiohttp_client(init_app(routes, SecretStr(TOKEN)))
    response = await client.get("/instances/ghost/healthz", headers=AUTH)
    assert (response.status, (await response.json())["statusCode"]) == (404, 404)
    routes.ensure("sleepy")
    response = await client.get("/instances/sleepy/healthz", headers=AUTH)
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"


async def test_a_request_is_forwarded_without_the_token(
    aiohttp_client: AiohttpClient, routes: Routes, instance_socket: str
) -> None:
    routes.open("alice", instance_socket)
    client = await aiohttp_client(init_app(routes, SecretStr(TOKEN)))
    response = await client.post(
        "/instances/alice/jobs/submit?a=1&b=x%26y%3Dz%20w",
        data=b'{"x": 1}',
        headers={**AUTH, "Content-Type": "application/json", "UCloud-Username": "YWxpY2U=", "Connection": "close"},
    )
    assert response.status == 200
    seen: dict[str, Any] = await response.json()
    assert (seen["method"], seen["path"], seen["body"]) == ("POST", "/jobs/submit?a=1&b=x%26y%3Dz%20w", '{"x": 1}')
    assert "authorization" not in seen["headers"]
    assert seen["headers"]["ucloud-username"] == "YWxpY2U="
    assert seen["headers"]["content-length"] == "8"
    assert seen["headers"]["host"] == "instance"
    root = await client.get("/instances/alice", headers=AUTH)
    assert (await root.json())["path"] == "/"


async def test_bodies_stream_both_ways_and_statuses_pass_through(
    aiohttp_client: AiohttpClient, routes: Routes, instance_socket: str
) -> None:
    routes.open("alice", instance_socket)
    client = await aiohttp_client(init_app(routes, SecretStr(TOKEN)))
    payload = bytes(range(256)) * 40_000  # ~10 MB, more than aiohttp would ever buffer for us

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 1 << 20):
            yield payload[start : start + (1 << 20)]

    upload = await client.post("/instances/alice/upload", data=chunks(), headers=AUTH)
    assert await upload.json() == {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    download = await client.get("/instances/alice/download", headers=AUTH)
    assert download.headers["X-Instance"] == "yes"
    assert len(await download.read()) == 64 * 65536
    teapot = await client.get("/instances/alice/teapot", headers=AUTH)
    assert (teapot.status, await teapot.json()) == (418, {"why": "short and stout"})


async def test_requests_are_activity_and_are_counted(
    aiohttp_client: AiohttpClient, routes: Routes, instance_socket: str
) -> None:
    routes.open("alice", instance_socket)
    route = routes.get("alice")
    assert route is not None
    before = route.last_activity
    client = await aiohttp_client(init_app(routes, SecretStr(TOKEN)))
    ok_before = REGISTRY.get_sample_value("ucim_ingress_requests_total", {"code": "200"}) or 0
    assert (await client.get("/instances/alice/healthz", headers=AUTH)).status == 200
    assert route.last_activity > before
    assert route.in_flight == 0
    assert REGISTRY.get_sample_value("ucim_ingress_requests_total", {"code": "200"}) == ok_before + 1


async def test_an_instance_that_went_away_is_503(aiohttp_client: AiohttpClient, routes: Routes, tmp_path: Path) -> None:
    routes.open("gone", str(tmp_path / "nothing-listens.sock"))
    client = await aiohttp_client(init_app(routes, SecretStr(TOKEN)))
    response = await client.get("/instances/gone/healthz", headers=AUTH)
    assert response.status == 503
    await routes.close("gone")
    assert (await client.get("/instances/gone/healthz", headers=AUTH)).status == 503
    await routes.remove("gone")
    assert (await client.get("/instances/gone/healthz", headers=AUTH)).status == 404


UPGRADE = {**AUTH, "Connection": "Upgrade", "Upgrade": "ucim-instance"}


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def open_tunnel(port: int, name: str, headers: dict[str, str]) -> tuple[int, *Streams]:
    """A raw connection to the ingress asking for a tunnel to ``name``: the answer's status, and the streams."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = "".join(f"{key}: {value}\r\n" for key, value in headers.items())
    writer.write(f"GET /instances/{name} HTTP/1.1\r\nHost: bridge\r\n{head}\r\n".encode())
    answer = await reader.readuntil(b"\r\n\r\n")
    return int(answer.split()[1]), reader, writer


async def call_through(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, body: bytes) -> Any:
    """One kept-alive POST over a tunnel, spoken to the instance itself; its JSON answer."""
    connection = h11.Connection(h11.CLIENT)
    fields = [("Host", "instance"), ("Content-Length", str(len(body)))]
    request = h11.Request(method="POST", target=path, headers=fields)
    writer.write(connection.send(request) + connection.send(h11.Data(data=body)) + connection.send(h11.EndOfMessage()))
    answer = bytearray()
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Data):
            answer += event.data
        elif isinstance(event, h11.EndOfMessage):
            return json.loads(answer)


async def test_a_tunnel_carries_kept_alive_calls_to_the_instance_and_counts_as_activity(
    aiohttp_client: AiohttpClient, routes: Routes, instance_socket: str
) -> None:
    routes.open("alice", instance_socket)
    route = routes.get("alice")
    assert route is not None
    client = await aiohttp_client(init_app(routes, SecretStr(TOKEN)))
    assert client.port is not None
    status, reader, writer = await open_tunnel(client.port, "alice", UPGRADE)
    assert status == 101
    try:
        for number in range(3):  # one connection, three calls: the tunnel stays
            before = route.last_activity
            seen = await call_through(reader, writer, f"/files/browse?n={number}", b'{"x": 1}')
            assert (seen["method"], seen["path"], seen["body"]) == ("POST", f"/files/browse?n={number}", '{"x": 1}')
            assert seen["headers"]["host"] == "instance"  # the caller's own request, untouched
            assert route.last_activity > before
        assert route.in_flight == 0  # an open tunnel is not activity by itself: the idle timer still runs
    finally:
        writer.close()


async def test_a_tunnel_needs_the_token_and_a_running_instance(
    aiohttp_client: AiohttpClient, routes: Routes, tmp_path: Path
) -> None:
    client = await aiohttp_client(init_app(routes, SecretStr(TOKEN)))
    assert client.port is not None
    routes.ensure("sleepy")
    routes.open("gone", str(tmp_path / "nothing-listens.sock"))
    for name, headers, expected in (
        ("alice", {**UPGRADE, "Authorization": "Bearer nope"}, 401),
        ("ghost", UPGRADE, 404),
        ("sleepy", UPGRADE, 503),
        ("gone", UPGRADE, 503),
    ):
        status, _, writer = await open_tunnel(client.port, name, headers)
        writer.close()
        assert status == expected, name


async def test_a_tunnel_closes_with_the_instance(aiohttp_client: AiohttpClient, routes: Routes, tmp_path: Path) -> None:
    accepted: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

    async def instance(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put(writer)

    path = str(tmp_path / "raw.sock")
    server = await asyncio.start_unix_server(instance, path)
    try:
        routes.open("alice", path)
        client = await aiohttp_client(init_app(routes, SecretStr(TOKEN)))
        assert client.port is not None
        status, reader, writer = await open_tunnel(client.port, "alice", UPGRADE)
        assert status == 101
        inner = await asyncio.wait_for(accepted.get(), 5)
        inner.write(b"raw bytes, both ways")
        assert await asyncio.wait_for(reader.readexactly(20), 5) == b"raw bytes, both ways"
        inner.close()  # the instance goes away: so does the caller's connection
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        server.close()


# --- the gateway's half: TunnelConnector against this ingress ---


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_the_gateways_tunnels_are_kept_alive_and_carry_large_bodies(
    aiohttp_server: AiohttpServer, routes: Routes, instance_socket: str, tmp_path: Path, tls: bool
) -> None:
    routes.open("alice", instance_socket)
    server = await aiohttp_server(init_app(routes, SecretStr(TOKEN)), ssl=self_signed(tmp_path) if tls else None)
    connector = TunnelConnector(f"Bearer {TOKEN}", ssl_context=trusting(tmp_path) if tls else None)
    opened: list[object] = []

    async def count_opened(*event: object) -> None:
        opened.append(event)

    tracing = aiohttp.TraceConfig()
    tracing.on_connection_create_end.append(count_opened)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[tracing]) as session:
        base = connector.base_url(str(server.make_url("/instances/alice")))
        assert base.scheme == "http"  # the instance's own HTTP; TLS, if any, is the tunnel's
        for number in range(3):
            async with session.post(base.with_path("/files/browse").with_query(n=number), data=b"{}") as answer:
                seen = await answer.json()
            assert (seen["path"], seen["body"]) == (f"/files/browse?n={number}", "{}")
            assert "authorization" not in seen["headers"]  # the token opens the tunnel, the instance never sees it
        data = os.urandom(8 * 1024 * 1024)
        async with session.post(base.with_path("/upload"), data=data) as answer:
            assert await answer.json() == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        async with session.get(base.with_path("/download")) as answer:
            assert await answer.read() == b"x" * 64 * 65536
    assert len(opened) == 1  # one tunnel for every call


async def test_the_gateways_connector_tells_the_ingress_refusals(aiohttp_server: AiohttpServer, routes: Routes) -> None:
    routes.ensure("sleepy")
    server = await aiohttp_server(init_app(routes, SecretStr(TOKEN)))
    for token, name, status, header in (
        ("nope", "sleepy", 401, "WWW-Authenticate"),
        (TOKEN, "ghost", 404, None),
        (TOKEN, "sleepy", 503, "Retry-After"),
    ):
        connector = TunnelConnector(f"Bearer {token}")
        async with aiohttp.ClientSession(connector=connector) as session:
            url = connector.base_url(str(server.make_url(f"/instances/{name}"))).with_path("/healthz")
            with pytest.raises(TunnelRefusedError) as refused:
                await session.get(url)
            assert refused.value.status == status
            assert header is None or header in refused.value.headers


async def test_the_gateways_connector_names_an_ingress_it_cannot_reach() -> None:
    connector = TunnelConnector(f"Bearer {TOKEN}")
    port = free_port()  # nothing listens there
    async with aiohttp.ClientSession(connector=connector) as session:
        url = connector.base_url(f"http://127.0.0.1:{port}/instances/alice").with_path("/healthz")
        with pytest.raises(aiohttp.ClientConnectionError, match=f"cannot reach the bridge ingress at .*:{port}"):
            await session.get(url)
        with pytest.raises(aiohttp.InvalidURL, match="not a tunnel's URL"):
            await session.get(f"http://127.0.0.1:{port}/healthz")


async def test_the_gateways_connector_gives_up_on_an_ingress_that_does_not_answer() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # reads the upgrade and never answers
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    connector = TunnelConnector(f"Bearer {TOKEN}")
    timeout = aiohttp.ClientTimeout(sock_connect=0.2)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            url = connector.base_url(f"http://127.0.0.1:{port}/instances/alice").with_path("/healthz")
            with pytest.raises(aiohttp.ClientConnectionError, match=f"127.0.0.1:{port} opened no tunnel within 0.2 s"):
                await session.get(url)
    finally:
        server.close()
