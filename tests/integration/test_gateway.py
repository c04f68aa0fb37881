"""The gateway against the real apiserver: instances and jobs land as validated custom resources."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr
from pytest_aiohttp import AiohttpClient

from tests.support.platform import Platform
from ucim.common.kube import Kube
from ucim.common.protocol import dump, encode_username
from ucim.common.resources import UCloudJob, UserInstance
from ucim.gateway.app import init_app
from ucim.gateway.settings import GatewaySettings
from ucim.testing import CoreStandIn

PROVIDER = "ucim"


@pytest.fixture
async def kube(platform: Platform) -> AsyncIterator[Kube]:
    async with await Kube.connect(platform.kubeconfig) as client:
        yield client


@pytest.fixture
async def gateway(
    platform: Platform, namespace: str, aiohttp_client: AiohttpClient
) -> AsyncIterator[tuple[TestClient[Any, Any], CoreStandIn]]:
    # The gateway's own client: its writes are checked against what the gateway owns.
    kube = await Kube.connect(platform.kubeconfig, component="gateway")
    core = CoreStandIn(PROVIDER, "refresh")
    settings = GatewaySettings(
        core_public_key=SecretStr(core.keys.public_key_b64()),
        namespace=namespace,
        init_wait_seconds=0.2,
        submit_wait_seconds=0.2,
    )
    yield await aiohttp_client(init_app(settings, kube=kube)), core
    await kube.close()


def auth(core: CoreStandIn, username: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {core.mint_service_token()}"}
    if username:
        headers["UCloud-Username"] = encode_username(username)
    return headers


async def test_init_then_jobs_land_in_the_apiserver(
    gateway: tuple[TestClient[Any, Any], CoreStandIn], platform: Platform, namespace: str, kube: Kube
) -> None:
    client, core = gateway
    job = core.make_job("9001", "alice#1", ("run-command", "1"), {"command": "echo 'hi there'"})
    first = await client.post(f"/ucloud/{PROVIDER}/jobs", headers=auth(core, "alice#1"), json={"items": [dump(job)]})
    assert first.status == 449

    init_call = f"/ucloud/{PROVIDER}/integration/init"
    init = await client.post(init_call, headers=auth(core, "alice#1"), json={"username": "alice#1"})
    # No bridge serves it yet: a 503, on which Core tries again (a 200 would end its retries).
    assert init.status == 503, await init.text()
    name = UserInstance.name_for("alice#1", "local")
    assert platform.get(namespace, f"userinstance/{name}")["spec"]["ucloudUsername"] == "alice#1"

    # What the bridge does once the instance serves (the bridge has its own tests).
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "InstanceServing",
        "message": "up",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    platform.patch(namespace, f"userinstance/{name}", {"status": {"conditions": [ready]}}, status=True)
    init = await client.post(init_call, headers=auth(core, "alice#1"), json={"username": "alice#1"})
    assert init.status == 200, await init.text()

    for _ in range(2):
        response = await client.post(
            f"/ucloud/{PROVIDER}/jobs", headers=auth(core, "alice#1"), json={"items": [dump(job)]}
        )
        assert response.status == 200, await response.text()
    stored = await kube.list(UCloudJob, namespace)
    assert [j.spec.job_id for j in stored] == ["9001"]
    assert stored[0].spec.parameters is not None
    assert stored[0].spec.parameters["command"].value == "echo 'hi there'"

    response = await client.post(
        f"/ucloud/{PROVIDER}/jobs/terminate", headers=auth(core, "alice#1"), json={"items": [dump(job)]}
    )
    assert response.status == 200
    assert platform.get(namespace, f"ucj/{UCloudJob.name_for('9001')}")["spec"]["terminate"] is True
