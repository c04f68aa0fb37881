"""Drives at the gateway: home drives registered on connect, once."""

from __future__ import annotations

import asyncio
import typing
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr
from pytest_aiohttp import AiohttpClient

from tests.support.fake_kube import FakeKube, play_instance_bridge
from ucim.common.drives import HOME_DRIVE_ANNOTATION
from ucim.common.kube import Kube
from ucim.common.protocol import ProductReference
from ucim.common.resources import UserConnection, UserInstance
from ucim.gateway.app import init_app
from ucim.gateway.settings import GatewaySettings
from ucim.testing import CoreStandIn

PROVIDER = "ucim"
NAMESPACE = "ucim"
REGISTER = "/api/files/collections/control/register"
READY = {"type": "Ready", "status": "True", "reason": "InstanceServing", "message": "",
         "lastTransitionTime": "2026-01-01T00:00:00Z"}  # fmt: skip


@pytest.fixture
async def core() -> AsyncIterator[CoreStandIn]:
    async with CoreStandIn(PROVIDER, "refresh-token") as core:
        await core.start()
        yield core


async def gateway(
    core: CoreStandIn, kube: FakeKube, aiohttp_client: AiohttpClient, **options: Any
) -> TestClient[Any, Any]:
    defaults: dict[str, Any] = {"init_wait_seconds": 1.0, "connect_wait_seconds": 1.0}
    settings = GatewaySettings(
        core_public_key=SecretStr(core.keys.public_key_b64()),
        provider_id=PROVIDER,
        namespace=NAMESPACE,
        core_url=core.url,
        core_refresh_token=SecretStr("refresh-token"),
        **(defaults | options),
    )
    return await aiohttp_client(init_app(settings, kube=typing.cast(Kube, kube)))


def auth(core: CoreStandIn) -> dict[str, str]:
    return {"Authorization": f"Bearer {core.mint_service_token()}"}


def connection_of(kube: FakeKube, username: str) -> UserConnection:
    return UserConnection.from_obj(
        kube.objects[("userconnections", NAMESPACE, UserConnection.name_for(username, "local"))]
    )


async def play_bridge(kube: FakeKube, username: str, local_user: str = "alice", *, instance: bool = False) -> None:
    """Map the user's connection once it exists (and make the instance Ready, when asked)."""
    key = ("userconnections", NAMESPACE, UserConnection.name_for(username, "local"))
    while key not in kube.objects:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    name = UserConnection.name_for(username, "local")
    await kube.patch(UserConnection, NAMESPACE, name, {"spec": {"localUser": local_user, "uid": 1101}})
    if instance:
        while await kube.get(UserInstance, NAMESPACE, name) is None:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await kube.patch_status(UserInstance, NAMESPACE, name, {"conditions": [READY]})


async def connect(client: TestClient[Any, Any], core: CoreStandIn, kube: FakeKube, username: str = "alice#1") -> int:
    bridge = asyncio.create_task(play_bridge(kube, username))
    response = await client.post(
        f"/ucloud/{PROVIDER}/integration/connect", json={"username": username}, headers=auth(core)
    )
    await bridge
    return response.status


async def test_connect_registers_the_home_drive_once(
    core: CoreStandIn, kube: FakeKube, aiohttp_client: AiohttpClient
) -> None:
    client = await gateway(core, kube, aiohttp_client)
    assert await connect(client, core, kube) == 200
    (home,) = core.drives_of("alice#1")
    assert home.provider_generated_id == "home:alice"
    assert home.specification.title == "Home"
    assert home.specification.product == ProductReference(id="home", category="storage", provider=PROVIDER)
    assert home.owner.created_by == "alice#1" and home.owner.project is None
    assert (connection_of(kube, "alice#1").metadata.annotations or {})[HOME_DRIVE_ANNOTATION] == home.id

    assert await connect(client, core, kube) == 200
    assert core.record.requests[REGISTER] == 1
    assert len(core.drives_of("alice#1")) == 1


async def test_a_forgotten_drive_id_is_found_at_core_again(
    core: CoreStandIn, kube: FakeKube, aiohttp_client: AiohttpClient
) -> None:
    client = await gateway(core, kube, aiohttp_client)
    assert await connect(client, core, kube) == 200
    home = core.home_of("alice#1")
    name = UserConnection.name_for("alice#1", "local")
    await kube.patch(UserConnection, NAMESPACE, name, {"metadata": {"annotations": {HOME_DRIVE_ANNOTATION: None}}})
    assert await connect(client, core, kube) == 200  # Core answers 409; the gateway looks the drive up
    assert core.drives_of("alice#1") == [home]
    assert (connection_of(kube, "alice#1").metadata.annotations or {})[HOME_DRIVE_ANNOTATION] == home.id


async def test_init_registers_the_home_once_the_user_is_mapped(
    core: CoreStandIn, kube: FakeKube, aiohttp_client: AiohttpClient
) -> None:
    client = await gateway(core, kube, aiohttp_client)
    init = f"/ucloud/{PROVIDER}/integration/init"
    bridge = asyncio.create_task(play_bridge(kube, "bob", "bob", instance=True))
    response = await client.post(init, json={"username": "bob"}, headers=auth(core))
    await bridge
    assert response.status == 200
    assert core.home_of("bob").provider_generated_id == "home:bob"
    assert (await client.post(init, json={"username": "bob"}, headers=auth(core))).status == 200
    assert core.record.requests[REGISTER] == 1


async def test_init_of_an_unmapped_user_registers_nothing_yet(
    core: CoreStandIn, kube: FakeKube, aiohttp_client: AiohttpClient
) -> None:
    client = await gateway(core, kube, aiohttp_client, init_wait_seconds=0.05)
    serve = asyncio.create_task(play_instance_bridge(kube, NAMESPACE, UserInstance.name_for("bob", "local")))
    response = await client.post(f"/ucloud/{PROVIDER}/integration/init", json={"username": "bob"}, headers=auth(core))
    await serve
    assert response.status == 200
    assert core.drives_of("bob") == []


async def test_a_core_that_refuses_the_drive_does_not_fail_the_connect(
    core: CoreStandIn, kube: FakeKube, aiohttp_client: AiohttpClient
) -> None:
    client = await gateway(core, kube, aiohttp_client)
    core.fail_requests(REGISTER, status=400)
    assert await connect(client, core, kube) == 200
    assert HOME_DRIVE_ANNOTATION not in (connection_of(kube, "alice#1").metadata.annotations or {})
    core.clear_failures()
    assert await connect(client, core, kube) == 200
    assert len(core.drives_of("alice#1")) == 1
