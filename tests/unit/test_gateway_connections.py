"""Connections at the gateway: connect, unlinked, retrieveManifest, init's "not connected" and "ended" answers.

Kubernetes is faked in memory; a small task plays the bridge (it fills the UserConnection's uid).
"""

from __future__ import annotations

import asyncio
import typing
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr
from pytest_aiohttp import AiohttpClient

from tests.support.fake_kube import FakeKube, play_instance_bridge
from ucim.common import reasons
from ucim.common.conditions import find_condition, is_true
from ucim.common.kube import Kube
from ucim.common.resources import UserConnection, UserInstance
from ucim.common.times import now_utc, rfc3339
from ucim.gateway.app import init_app
from ucim.gateway.settings import GatewaySettings
from ucim.testing import CoreStandIn

PROVIDER = "ucim"
NAMESPACE = "ucim"
UCLOUD_URL = "https://ucloud.example"


@pytest.fixture
async def core() -> AsyncIterator[CoreStandIn]:
    core = CoreStandIn(PROVIDER, "refresh-token")
    await core.start()
    yield core
    await core.stop()


async def gateway(
    core: CoreStandIn, kube: FakeKube, aiohttp_client: AiohttpClient, **extra: Any
) -> TestClient[Any, Any]:
    options: dict[str, Any] = {"core_url": core.url, "core_refresh_token": SecretStr("refresh-token")} | extra
    settings = GatewaySettings(
        core_public_key=SecretStr(core.keys.public_key_b64()),
        provider_id=PROVIDER,
        namespace=NAMESPACE,
        init_wait_seconds=0.05,
        connect_wait_seconds=1.0,
        ucloud_url=UCLOUD_URL,
        **options,
    )
    return await aiohttp_client(init_app(settings, kube=typing.cast(Kube, kube)))


def auth(core: CoreStandIn) -> dict[str, str]:
    return {"Authorization": f"Bearer {core.mint_service_token()}"}


def connection_of(kube: FakeKube, username: str) -> UserConnection | None:
    obj = kube.objects.get(("userconnections", NAMESPACE, UserConnection.name_for(username, "local")))
    return UserConnection.from_obj(obj) if obj is not None else None


async def play_bridge(kube: FakeKube, username: str, uid: int | None = 1101, refuse: str = "") -> None:
    """What the bridge does: map the connection once it exists."""
    name = UserConnection.name_for(username, "local")
    while connection_of(kube, username) is None:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    if refuse:
        refused = {"type": "Mapped", "status": "False", "reason": "MappingRefused", "message": refuse,
                   "lastTransitionTime": rfc3339(now_utc())}  # fmt: skip
        await kube.patch_status(UserConnection, NAMESPACE, name, {"conditions": [refused]})
    else:
        await kube.patch(UserConnection, NAMESPACE, name, {"spec": {"localUser": "alice", "uid": uid}})


async def test_manifest_says_enabled_and_the_expiry(
    core: CoreStandIn, kube: FakeKube, aiohttp_client: AiohttpClient
) -> None:
    client = await gateway(core, kube, aiohttp_client, connection_expire_after_ms=3_600_000)
    response = await client.get(f"/ucloud/{PROVIDER}/integration/retrieveManifest", headers=auth(core))
    assert response.status == 200
    assert await response.json() == {"enabled": True, "expireAfterMs": 3_600_000}


async def test_connect_maps_approves_and_redirects(
    core: CoreStandIn, kube: FakeKube, aiohttp_client: AiohttpClient
) -> None:
    client = await gateway(core, kube, aiohttp_client, connection_expire_after_ms=60_000)
    bridge = asyncio.create_task(play_bridge(kube, "alice#1"))
    response = await client.post(
        f"/ucloud/{PROVIDER}/integration/connect", json={"username": "alice#1"}, headers=auth(core)
    )
    await bridge
    assert response.status == 200, await response.text()
    assert await response.json() == {"redirectTo": UCLOUD_URL}
    assert core.record.approved_connections == ["alice#1"]
    connection = connection_of(kube, "alice#1")
    assert connection is not None and connection.spec.uid == 1101
    assert is_true(connection.status.conditions, reasons.CONNECTED)
    assert connection.spec.expires_at is not None


async def test_a_refused_mapping_is_a_403_with_the_reason(
    core: CoreStandIn, kube: FakeKube, aiohttp_client: AiohttpClient
) -> None:
    client = await gateway(core, kube, aiohttp_client)
    bridge = asyncio.create_task(play_bridge(kube, "mallory", refuse="there is no local user 'mallory'"))
    response = await client.post(
        f"/ucloud/{PROVIDER}/integration/connect", json={"username": "mallory"}, headers=auth(core)
    )
    await bridge
    assert response.status == 403
    assert "there is no local user 'mallory'" in (await response.json())["why"]
    assert core.record.approved_connections == []
    # Connecting again asks for the mapping again, so the bridge tries once more.
    bridge = asyncio.create_task(play_bridge(kube, "mallory"))
    await client.post(f"/ucloud/{PROVIDER}/integration/connect", json={"username": "mallory"}, headers=auth(core))
    await bridge
    assert core.record.approved_connections == ["mallory"]


async def test_init_of_a_user_not_connected_is_refused_until_they_connect(
    core: CoreStandIn, kube: FakeKube, aiohttp_client: AiohttpClient
) -> None:
    client = await gateway(core, kube, aiohttp_client, auto_connect=False)
    init = f"/ucloud/{PROVIDER}/integration/init"
    response = await client.post(init, json={"username": "alice#1"}, headers=auth(core))
    assert response.status == 403
    assert "not connected" in (await response.json())["why"]
    assert kube.objects.get(("userinstances", NAMESPACE, UserInstance.name_for("alice#1", "local"))) is None

    bridge = asyncio.create_task(play_bridge(kube, "alice#1"))
    connect = await client.post(
        f"/ucloud/{PROVIDER}/integration/connect", json={"username": "alice#1"}, headers=auth(core)
    )
    await bridge
    assert connect.status == 200
    serve = asyncio.create_task(play_instance_bridge(kube, NAMESPACE, UserInstance.name_for("alice#1", "local")))
    assert (await client.post(init, json={"username": "alice#1"}, headers=auth(core))).status == 200
    await serve
    assert kube.objects.get(("userinstances", NAMESPACE, UserInstance.name_for("alice#1", "local"))) is not None


async def test_init_connects_automatically_by_default(
    core: CoreStandIn, kube: FakeKube, aiohttp_client: AiohttpClient
) -> None:
    client = await gateway(core, kube, aiohttp_client)
    serve = asyncio.create_task(play_instance_bridge(kube, NAMESPACE, UserInstance.name_for("bob", "local")))
    response = await client.post(f"/ucloud/{PROVIDER}/integration/init", json={"username": "bob"}, headers=auth(core))
    await serve
    assert response.status == 200
    connection = connection_of(kube, "bob")
    assert connection is not None
    connected = find_condition(connection.status.conditions, reasons.CONNECTED)
    assert connected is not None and connected.status == "True" and connected.reason == reasons.AUTO_CONNECTED


async def test_unlinked_expires_keeps_the_uid_and_stops_the_instance(
    core: CoreStandIn, kube: FakeKube, aiohttp_client: AiohttpClient
) -> None:
    client = await gateway(core, kube, aiohttp_client)
    bridge = asyncio.create_task(play_bridge(kube, "alice#1"))
    await client.post(f"/ucloud/{PROVIDER}/integration/connect", json={"username": "alice#1"}, headers=auth(core))
    await bridge
    init = f"/ucloud/{PROVIDER}/integration/init"
    serve = asyncio.create_task(play_instance_bridge(kube, NAMESPACE, UserInstance.name_for("alice#1", "local")))
    assert (await client.post(init, json={"username": "alice#1"}, headers=auth(core))).status == 200
    await serve

    response = await client.post(
        f"/ucloud/{PROVIDER}/integration/unlinked", json={"username": "alice#1"}, headers=auth(core)
    )
    assert response.status == 200
    # The operator tells Core (clearConnection) once it sees the connection ended: not the gateway.
    assert core.record.cleared_connections == []
    connection = connection_of(kube, "alice#1")
    assert connection is not None and connection.spec.uid == 1101 and connection.spec.expires_at is not None
    assert not is_true(connection.status.conditions, reasons.CONNECTED)
    assert kube.objects.get(("userinstances", NAMESPACE, UserInstance.name_for("alice#1", "local"))) is None
    # Not connected again behind the user's back, although auto_connect is on.
    refused = await client.post(init, json={"username": "alice#1"}, headers=auth(core))
    assert refused.status == 403
    assert (await refused.json())["why"] == "You disconnected from this provider; connect again in UCloud"


async def test_an_expired_user_is_refused_not_reconnected_until_they_connect_again(
    core: CoreStandIn, kube: FakeKube, aiohttp_client: AiohttpClient
) -> None:
    client = await gateway(core, kube, aiohttp_client, connection_expire_after_ms=3_600_000)
    bridge = asyncio.create_task(play_bridge(kube, "alice#1"))
    await client.post(f"/ucloud/{PROVIDER}/integration/connect", json={"username": "alice#1"}, headers=auth(core))
    await bridge
    name = UserConnection.name_for("alice#1", "local")
    past = rfc3339(now_utc() - timedelta(seconds=5))
    await kube.patch(UserConnection, NAMESPACE, name, {"spec": {"expiresAt": past}})

    init = f"/ucloud/{PROVIDER}/integration/init"
    refused = await client.post(init, json={"username": "alice#1"}, headers=auth(core))
    assert refused.status == 403
    assert (await refused.json())["why"] == "Your connection to this provider expired; connect again in UCloud"
    expired = connection_of(kube, "alice#1")
    assert expired is not None and expired.spec.expires_at == datetime.fromisoformat(past)
    connected = find_condition(expired.status.conditions, reasons.CONNECTED)
    assert connected is not None and connected.reason == reasons.CONNECTION_APPROVED  # not AutoConnected
    assert kube.objects.get(("userinstances", NAMESPACE, UserInstance.name_for("alice#1", "local"))) is None

    # The user connects again in UCloud: a new expiry, and init works.
    connect = await client.post(
        f"/ucloud/{PROVIDER}/integration/connect", json={"username": "alice#1"}, headers=auth(core)
    )
    assert connect.status == 200
    renewed = connection_of(kube, "alice#1")
    assert renewed is not None and renewed.spec.expires_at is not None and renewed.spec.expires_at > now_utc()
    assert core.record.approved_connections == ["alice#1", "alice#1"]
    serve = asyncio.create_task(play_instance_bridge(kube, NAMESPACE, UserInstance.name_for("alice#1", "local")))
    assert (await client.post(init, json={"username": "alice#1"}, headers=auth(core))).status == 200
    await serve


async def test_connect_without_core_configured_is_a_503(
    core: CoreStandIn, kube: FakeKube, aiohttp_client: AiohttpClient
) -> None:
    client = await gateway(core, kube, aiohttp_client, core_url=None)
    bridge = asyncio.create_task(play_bridge(kube, "alice#1"))
    response = await client.post(
        f"/ucloud/{PROVIDER}/integration/connect", json={"username": "alice#1"}, headers=auth(core)
    )
    await bridge
    assert response.status == 503
