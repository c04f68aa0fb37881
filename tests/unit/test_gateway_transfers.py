"""The browser-facing transfer endpoints: CHUNKED uploads and downloads, streamed through to the user's instance."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import pytest

from tests.support.gateway_files import BASE, NAMESPACE, READY, Env, GatewayFactory, metric
from ucim.common import instance_api as api
from ucim.common.protocol import encode_username
from ucim.common.reasons import REQUESTED_AT_ANNOTATION
from ucim.common.resources import UserConnection, UserInstance
from ucim.gateway import transfers

pytestmark = pytest.mark.relay_loops  # the gateway and the bridge run on uvloop


def hint(username: str) -> str:
    return base64.urlsafe_b64encode(username.encode()).decode().rstrip("=")


def chunk_headers(token: str = "t-1", offset: int = 0, total: int = 5) -> dict[str, str]:  # noqa: S107
    return {
        api.CHUNKED_TOKEN_HEADER: token,
        api.CHUNKED_OFFSET_HEADER: str(offset),
        api.CHUNKED_TOTAL_SIZE_HEADER: str(total),
    }


async def play_bridge_start(env: Env, username: str = "alice") -> None:
    """What the bridge does when asked to (re)start an instance: it becomes Ready and serves."""
    name = UserInstance.name_for(username, "local")
    while True:
        instance = await env.kube.get(UserInstance, NAMESPACE, name)
        if instance is not None and (instance.metadata.annotations or {}).get(REQUESTED_AT_ANNOTATION):
            break
        if instance is not None and instance.metadata.resource_version and not instance.status.conditions:
            break  # created just now by the gateway
        await asyncio.sleep(0.01)
    await env.serve(username)


# --- uploads ------------------------------------------------------------------------------


async def test_a_chunk_goes_to_the_users_instance_without_a_jwt(env: Env) -> None:
    name = await env.serve("alice#1234")
    before = metric("ucim_gateway_upload_bytes_total")
    response = await env.gateway.post(
        f"{BASE}/upload", params={"usernameHint": hint("alice#1234")}, data=b"hello", headers=chunk_headers()
    )
    assert response.status == 200, await response.text()
    assert (await response.json())["complete"] is True
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    seen = env.ingress.last()
    assert (seen.instance, seen.method, seen.path, seen.body) == (name, "POST", api.UPLOAD_CHUNK_PATH, b"hello")
    for header, value in chunk_headers().items():
        assert seen.headers[header] == value
    assert seen.headers["Content-Length"] == "5"
    assert seen.tunneled  # a small chunk (a small file) takes a tunnel
    assert "Authorization" not in seen.headers
    assert metric("ucim_gateway_upload_bytes_total") == before + 5


async def test_the_user_may_come_from_the_username_header(env: Env) -> None:
    await env.serve("bob")
    response = await env.gateway.post(
        f"{BASE}/upload", data=b"hello", headers={**chunk_headers(), "UCloud-Username": encode_username("bob")}
    )
    assert response.status == 200
    assert env.ingress.last().instance == UserInstance.name_for("bob", "local")


async def test_progress_is_a_get_with_the_token(env: Env) -> None:
    await env.serve()
    response = await env.gateway.get(
        f"{BASE}/upload", params={"usernameHint": hint("alice")}, headers={api.CHUNKED_TOKEN_HEADER: "t-1"}
    )
    assert response.status == 200
    assert (await response.json())["complete"] is False
    seen = env.ingress.last()
    assert (seen.method, seen.path, seen.body, seen.headers[api.CHUNKED_TOKEN_HEADER]) == (
        "GET",
        api.UPLOAD_CHUNK_PATH,
        b"",
        "t-1",
    )


@pytest.mark.parametrize(
    ("params", "extra", "status", "why"),
    [
        ({}, {}, 400, "usernameHint"),
        ({"usernameHint": "!!!"}, {}, 400, "invalid usernameHint"),
        ({"usernameHint": hint("nobody")}, {}, 404, "unknown or expired token"),
        ({"usernameHint": hint("alice")}, {api.CHUNKED_TOKEN_HEADER: ""}, 400, api.CHUNKED_TOKEN_HEADER),
    ],
    ids=["no-user", "bad-hint", "unknown-user", "no-token"],
)
async def test_bad_uploads_are_refused_in_words(
    env: Env, params: dict[str, str], extra: dict[str, str], status: int, why: str
) -> None:
    await env.serve()
    chunk = {k: v for k, v in (chunk_headers() | extra).items() if v}
    response = await env.gateway.post(f"{BASE}/upload", params=params, data=b"hello", headers=chunk)
    assert response.status == status
    assert why.lower() in (await response.json())["why"].lower()
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert env.ingress.seen == []
    assert await env.kube.get(UserInstance, NAMESPACE, UserInstance.name_for("nobody", "local")) is None


async def test_a_chunk_needs_its_length_and_a_bounded_size(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    await env.serve()

    async def unsized() -> AsyncIterator[bytes]:
        yield b"hello"

    params = {"usernameHint": hint("alice")}
    response = await env.gateway.post(f"{BASE}/upload", params=params, data=unsized(), headers=chunk_headers())
    assert response.status == 411
    monkeypatch.setattr(transfers, "MAX_CHUNK_BYTES", 4)
    response = await env.gateway.post(f"{BASE}/upload", params=params, data=b"hello", headers=chunk_headers())
    assert response.status == 413
    assert env.ingress.seen == []


async def test_the_upload_streams_through(env: Env) -> None:
    """The instance has the first bytes while the browser still holds the rest: nothing waits for the whole body."""
    await env.serve()
    env.ingress.resume_upload = asyncio.Event()
    first, rest = b"a" * 100_000, b"b" * 1_000_000

    async def body() -> AsyncIterator[bytes]:
        yield first
        async with asyncio.timeout(5):
            await env.ingress.first_upload_bytes.wait()  # a gateway that buffered would never get here
        env.ingress.resume_upload.set()  # type: ignore[union-attr]
        yield rest

    headers = {**chunk_headers(total=len(first + rest)), "Content-Length": str(len(first + rest))}
    response = await env.gateway.post(
        f"{BASE}/upload", params={"usernameHint": hint("alice")}, data=body(), headers=headers
    )
    assert response.status == 200
    seen = env.ingress.last()
    assert seen.body == first + rest
    assert seen.chunks > 1
    assert not seen.tunneled  # a large chunk is forwarded, for the bridge to splice it


# --- downloads ----------------------------------------------------------------------------


async def test_a_download_streams_with_ranges(env: Env) -> None:
    name = await env.serve()
    before = metric("ucim_gateway_download_bytes_total")
    params = {"token": "a/b+c=", "usernameHint": hint("alice")}
    response = await env.gateway.get(f"{BASE}/download", params=params, headers={"Range": "bytes=10-19"})
    assert response.status == 206
    assert await response.read() == env.ingress.download[10:20]
    assert response.headers["Content-Range"] == f"bytes 10-19/{len(env.ingress.download)}"
    assert response.headers["Content-Length"] == "10"
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["ETag"] == '"v1"'
    assert response.headers["Content-Disposition"].startswith("attachment")
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    seen = env.ingress.last()
    assert (seen.instance, seen.method, seen.path) == (name, "GET", api.DOWNLOAD_FILE_PATH)
    assert seen.query == {"token": "a/b+c="}
    assert seen.headers["Range"] == "bytes=10-19"
    assert metric("ucim_gateway_download_bytes_total") == before + 10


async def test_the_download_streams_through(env: Env) -> None:
    """The browser has the first piece while the instance still holds the rest."""
    await env.serve()
    env.ingress.resume_download = asyncio.Event()
    response = await env.gateway.get(f"{BASE}/download", params={"token": "t", "usernameHint": hint("alice")})
    assert response.status == 200
    async with asyncio.timeout(5):  # a gateway that buffered would wait for the end that never comes
        first = await response.content.readexactly(env.ingress.download_piece)
    env.ingress.resume_download.set()
    assert first + await response.read() == env.ingress.download


async def test_a_download_needs_its_token(env: Env) -> None:
    response = await env.gateway.get(f"{BASE}/download", params={"usernameHint": hint("alice")})
    assert response.status == 400
    assert "token" in (await response.json())["why"]


async def test_cors_preflight_needs_no_jwt(env: Env) -> None:
    for path in ("upload", "download"):
        response = await env.gateway.options(
            f"{BASE}/{path}",
            headers={"Origin": "https://cloud.sdu.dk", "Access-Control-Request-Method": "POST"},
        )
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        allowed = response.headers["Access-Control-Allow-Headers"]
        for header in (*chunk_headers(), "UCloud-Username", "Range"):
            assert header in allowed
        assert "POST" in response.headers["Access-Control-Allow-Methods"]


async def test_only_the_transfer_endpoints_skip_the_jwt(env: Env) -> None:
    await env.serve()
    response = await env.gateway.post(f"{BASE}/files/browse", json={}, headers={"UCloud-Username": hint("alice")})
    assert response.status == 401
    response = await env.gateway.post(f"{BASE}/upload/../files/browse", json={})
    assert response.status in (401, 404)


# --- instances stopped while idle -----------------------------------------------------------


async def test_a_stopped_instance_is_woken_for_an_upload(env: Env) -> None:
    await env.serve(ready=False)
    bridge = asyncio.create_task(play_bridge_start(env))
    response = await env.gateway.post(
        f"{BASE}/upload", params={"usernameHint": hint("alice")}, data=b"hello", headers=chunk_headers()
    )
    await bridge
    assert response.status == 200, await response.text()
    assert env.ingress.last().body == b"hello"


async def test_an_instance_stopped_behind_the_cache_is_woken_for_a_download(env: Env) -> None:
    name = await env.serve()
    params = {"token": "t", "usernameHint": hint("alice")}
    assert (await env.gateway.get(f"{BASE}/download", params=params)).status == 200
    await env.serve(ready=False)  # stopped while idle, after the gateway cached its endpoint
    bridge = asyncio.create_task(play_bridge_start(env))
    response = await env.gateway.get(f"{BASE}/download", params=params)
    await bridge
    assert response.status == 200
    assert await response.read() == env.ingress.download
    assert name in env.ingress.running
    assert not env.ingress.last().tunneled  # downloads are forwarded, for the bridge to splice them


async def test_a_connected_user_without_an_instance_gets_one(env: Env) -> None:
    connection = UserConnection.from_obj(
        {
            "metadata": {"name": UserConnection.name_for("alice", "local")},
            "spec": {"ucloudUsername": "alice", "cluster": "local", "localUser": "alice", "uid": 1101},
        }
    )
    await env.kube.create(connection, NAMESPACE)
    connected = {**READY, "type": "Connected", "reason": "AutoConnected"}
    await env.kube.patch_status(UserConnection, NAMESPACE, connection.metadata.name, {"conditions": [connected]})
    bridge = asyncio.create_task(play_bridge_start(env))
    response = await env.gateway.get(f"{BASE}/download", params={"token": "t", "usernameHint": hint("alice")})
    await bridge
    assert response.status == 200


async def test_an_instance_that_does_not_start_in_time_is_a_503(make_gateway: GatewayFactory, env: Env) -> None:
    gateway = await make_gateway(transfer_wait_seconds=0.05)
    await env.serve(ready=False)
    response = await gateway.get(f"{BASE}/download", params={"token": "t", "usernameHint": hint("alice")})
    assert response.status == 503
    assert "try again" in (await response.json())["why"]
    instance = await env.kube.get(UserInstance, NAMESPACE, UserInstance.name_for("alice", "local"))
    assert instance is not None and REQUESTED_AT_ANNOTATION in (instance.metadata.annotations or {})
