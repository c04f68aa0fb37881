"""The gateway's follow websocket: who may follow which job, what closes it, and that the end does not."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.support.fake_kube import FakeKube
from tests.support.gateway_files import NAMESPACE, PROVIDER, Env, GatewayFactory, metric, settings
from ucim.common.protocol import dump
from ucim.common.resources import UCloudJob
from ucim.gateway.jobs import to_ucloud_job
from ucim.testing import CoreStandIn

URL = f"/ucloud/jobs.provider.{PROVIDER}/websocket"


@pytest.fixture
async def client(make_gateway: GatewayFactory) -> TestClient[Any, Any]:
    return await make_gateway()


async def alice_s_job(core: CoreStandIn, kube: FakeKube) -> str:
    job = core.make_job("4711", "alice", ("run-command", "1"), {"command": "echo hi"})
    gateway = settings(core)
    resource = to_ucloud_job(
        job,
        namespace=NAMESPACE,
        cluster=gateway.cluster,
        provider_id=PROVIDER,
        machines=gateway.machine_types,
        drives={},
    )
    await kube.create(resource, NAMESPACE)
    return job.id


async def first_frames(client: TestClient[Any, Any], core: CoreStandIn, user: str, frame: str) -> list[Any]:
    socket = await client.ws_connect(
        URL + f"?usernameHint={_hint(user)}", headers={"Authorization": f"Bearer {core.mint_service_token()}"}
    )
    await socket.send_str(frame)
    got: list[Any] = []
    async for message in socket:
        got.append(json.loads(message.data) if message.type == aiohttp.WSMsgType.TEXT else message.type)
    got.append(socket.close_code)
    return got


def _hint(user: str) -> str:
    return base64.urlsafe_b64encode(user.encode()).decode().rstrip("=")


def init(core: CoreStandIn, job_id: str, call: str = f"jobs.provider.{PROVIDER}.follow") -> str:
    job = core.make_job(job_id, "alice")
    return json.dumps({"call": call, "streamId": "3", "payload": {"type": "init", "job": dump(job)}})


async def test_another_user_s_job_is_refused_with_a_403_frame(
    client: TestClient[Any, Any], core: CoreStandIn, kube: FakeKube
) -> None:
    job_id = await alice_s_job(core, kube)
    refusal, close = await first_frames(client, core, "bob", init(core, job_id))
    assert refusal["type"] == "response" and refusal["status"] == 403 and refusal["streamId"] == "3"
    assert "belongs to another user" in refusal["payload"]["why"]
    assert close == aiohttp.WSCloseCode.POLICY_VIOLATION


async def test_an_unknown_job_is_a_404_frame(client: TestClient[Any, Any], core: CoreStandIn) -> None:
    refusal, _ = await first_frames(client, core, "alice", init(core, "999"))
    assert refusal["status"] == 404 and "no job 999" in refusal["payload"]["why"]


async def test_another_call_closes_the_socket(client: TestClient[Any, Any], core: CoreStandIn) -> None:
    [close] = await first_frames(client, core, "alice", init(core, "1", call="jobs.provider.other.follow"))
    assert close == aiohttp.WSCloseCode.POLICY_VIOLATION


async def test_no_jwt_or_no_user_is_refused_before_the_upgrade(client: TestClient[Any, Any], core: CoreStandIn) -> None:
    unsigned = await client.get(URL + f"?usernameHint={_hint('alice')}")
    assert unsigned.status == 401
    anonymous = await client.get(URL, headers={"Authorization": f"Bearer {core.mint_service_token()}"})
    assert anonymous.status == 400 and "UCloud-Username" in (await anonymous.json())["why"]


async def followed_to_the_end(env: Env) -> aiohttp.ClientWebSocketResponse:
    """A follow of alice's finished job, read up to its end frame."""
    job_id = await alice_s_job(env.core, env.kube)
    final = {"state": "SUCCESS", "jobFolder": "/home/alice/ucloud-jobs/4711"}
    await env.kube.patch_status(UCloudJob, NAMESPACE, UCloudJob.name_for(job_id), final)
    await env.serve("alice")
    env.ingress.follow_chunks = [{"file": "stdout.txt", "rank": 0, "stream": "stdout", "text": "hi\n", "end": 3}]
    socket = await env.gateway.ws_connect(URL + f"?usernameHint={_hint('alice')}", headers=env.headers(None))
    await socket.send_str(init(env.core, job_id))
    frames: list[dict[str, Any]] = []
    while not frames or frames[-1].get("type") != "response":
        frame = await socket.receive_json(timeout=5)
        if frame != {"ping": "pong"}:
            frames.append(frame)
    assert [f["payload"]["stdout"] for f in frames] == ["hi\n", None] and frames[-1]["status"] == 200
    return socket


async def test_after_the_end_the_socket_stays_open_until_core_closes_it(env: Env) -> None:
    """As IM2: core2 stops polling the job for the browser once the provider closes (FOLLOW-SHELL-CHECK)."""
    socket = await followed_to_the_end(env)
    with pytest.raises(asyncio.TimeoutError):
        await socket.receive(timeout=0.3)
    assert not socket.closed and metric("ucim_gateway_sessions_open", type="follow") == 1
    await socket.close()
    async with asyncio.timeout(5):
        while metric("ucim_gateway_sessions_open", type="follow") != 0:  # noqa: ASYNC110 - the handler ends after the close
            await asyncio.sleep(0.01)


async def test_a_stopping_gateway_closes_the_open_sockets_as_going_away(env: Env) -> None:
    socket = await followed_to_the_end(env)
    await env.gateway.app.shutdown()
    closing = await socket.receive(timeout=5)
    assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == aiohttp.WSCloseCode.GOING_AWAY
