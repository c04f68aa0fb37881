"""The gateway's follow websocket before any output: who may follow which job, and what else closes it."""

from __future__ import annotations

import base64
import json
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.support.fake_kube import FakeKube
from tests.support.gateway_files import NAMESPACE, PROVIDER, GatewayFactory, settings
from ucim.common.protocol import dump
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
