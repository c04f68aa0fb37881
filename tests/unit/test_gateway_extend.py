"""jobs/extend on the wire: the gateway's answers, with Kubernetes faked in memory and the bridge played here."""

from __future__ import annotations

import asyncio
import typing
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr
from pytest_aiohttp import AiohttpClient

from tests.support.extension_jobs import OWNER, extend_item, sample_job
from tests.support.fake_kube import FakeKube
from ucim.common.kube import Kube
from ucim.common.protocol import SimpleDuration, dump, encode_username
from ucim.common.resources import UCloudJob
from ucim.gateway.app import init_app
from ucim.gateway.extension_policy import ExtensionPolicy
from ucim.gateway.settings import GatewaySettings
from ucim.testing import CoreStandIn

PROVIDER = "ucim"
NAMESPACE = "ucim"
NAME = UCloudJob.name_for("4711")


def gateway_settings(core: CoreStandIn, **policy: Any) -> GatewaySettings:
    return GatewaySettings(
        core_public_key=SecretStr(core.keys.public_key_b64()),
        provider_id=PROVIDER,
        namespace=NAMESPACE,
        extension=ExtensionPolicy(**{"max_per_request_minutes": 120, "wait_seconds": 0.5, **policy}),
    )


@pytest.fixture
async def client(core: CoreStandIn, kube: FakeKube, aiohttp_client: AiohttpClient) -> TestClient[Any, Any]:
    job = sample_job()
    await kube.create(job, NAMESPACE)
    await kube.patch_status(UCloudJob, NAMESPACE, NAME, job.status.to_dict())
    return await aiohttp_client(init_app(gateway_settings(core), kube=typing.cast(Kube, kube)))


async def play_bridge(kube: FakeKube, result: str = "Applied", message: str = "Time limit extended") -> None:
    """Answer every extension the gateway records, as the bridge does (status.extensions)."""
    while True:
        job = await kube.wait_for(UCloudJob, NAMESPACE, NAME, lambda j: j is not None and bool(j.pending_extensions()))
        assert job is not None
        answer = {
            "id": job.pending_extensions()[0].id,
            "result": result,
            "message": message,
            "at": "2026-12-01T12:00:00Z",
        }
        await kube.patch_status(
            UCloudJob, NAMESPACE, NAME, {"extensions": [*(o.to_dict() for o in job.status.extensions), answer]}
        )


@pytest.fixture
async def bridge(kube: FakeKube) -> AsyncIterator[None]:
    task = asyncio.create_task(play_bridge(kube))
    yield
    task.cancel()


async def extend(
    client: TestClient[Any, Any],
    core: CoreStandIn,
    requested: SimpleDuration,
    username: str | None = OWNER,
    **item: Any,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {core.mint_service_token()}"}
    if username is not None:
        headers["UCloud-Username"] = encode_username(username)
    body = {"items": [dump(extend_item(requested, **item))]}
    response = await client.post(f"/ucloud/{PROVIDER}/jobs/extend", headers=headers, json=body)
    return response.status, await response.json()


async def stored(kube: FakeKube) -> UCloudJob:
    job = await kube.get(UCloudJob, NAMESPACE, NAME)
    assert job is not None
    return job


@pytest.mark.usefixtures("bridge")
async def test_an_applied_extension_is_an_empty_response_per_item(
    client: TestClient[Any, Any], core: CoreStandIn, kube: FakeKube
) -> None:
    assert await extend(client, core, SimpleDuration(hours=1)) == (200, {"responses": [{}]})
    (asked,) = (await stored(kube)).spec.extensions or []
    assert (asked.add_minutes, asked.time_limit_minutes) == (60, 65)
    # The same call again (Core's retry) is answered from the first, and records nothing new.
    assert await extend(client, core, SimpleDuration(hours=1)) == (200, {"responses": [{}]})
    assert len((await stored(kube)).spec.extensions or []) == 1


async def test_the_bridges_refusal_is_a_400_with_its_reason(
    client: TestClient[Any, Any], core: CoreStandIn, kube: FakeKube
) -> None:
    task = asyncio.create_task(play_bridge(kube, "Refused", "beyond the partition's MaxTime"))
    try:
        status, body = await extend(client, core, SimpleDuration(hours=1))
    finally:
        task.cancel()
    assert status == 400
    assert body["why"] == "Job 4711 cannot be extended: beyond the partition's MaxTime"


async def test_beyond_the_policy_is_a_400_naming_the_limit_and_records_nothing(
    client: TestClient[Any, Any], core: CoreStandIn, kube: FakeKube
) -> None:
    status, body = await extend(client, core, SimpleDuration(hours=3))
    assert status == 400 and "at most 2 h per request" in body["why"]
    assert (await stored(kube)).spec.extensions is None


async def test_without_the_bridges_answer_the_call_says_so_and_the_request_stays(
    client: TestClient[Any, Any], core: CoreStandIn, kube: FakeKube
) -> None:
    status, body = await extend(client, core, SimpleDuration(hours=1))
    assert status == 503
    assert "is recorded" in body["why"] and "does not extend the job twice" in body["why"]
    assert len((await stored(kube)).pending_extensions()) == 1
    # Core's retry, once the bridge answers, is that same request.
    task = asyncio.create_task(play_bridge(kube))
    try:
        assert await extend(client, core, SimpleDuration(hours=1)) == (200, {"responses": [{}]})
    finally:
        task.cancel()
    assert len((await stored(kube)).spec.extensions or []) == 1


async def test_only_the_owner_extends(client: TestClient[Any, Any], core: CoreStandIn) -> None:
    status, body = await extend(client, core, SimpleDuration(hours=1), username="mallory")
    assert status == 403 and "only its owner can extend it" in body["why"]


async def test_an_unknown_job_is_a_404(client: TestClient[Any, Any], core: CoreStandIn) -> None:
    status, body = await extend(client, core, SimpleDuration(hours=1), job_id="9999")
    assert status == 404 and "not known" in body["why"]


async def test_an_ended_job_is_a_400(client: TestClient[Any, Any], core: CoreStandIn, kube: FakeKube) -> None:
    await kube.patch_status(UCloudJob, NAMESPACE, NAME, {"state": "SUCCESS"})
    status, body = await extend(client, core, SimpleDuration(hours=1))
    assert status == 400 and "has ended (SUCCESS)" in body["why"]


async def test_a_site_that_disables_extension_refuses_it_and_does_not_offer_it(
    core: CoreStandIn, kube: FakeKube, aiohttp_client: AiohttpClient
) -> None:
    settings = gateway_settings(core, enabled=False)
    client = await aiohttp_client(init_app(settings, kube=typing.cast(Kube, kube)))
    status, body = await extend(client, core, SimpleDuration(hours=1))
    assert status == 400 and "not supported" in body["why"]
    headers = {"Authorization": f"Bearer {core.mint_service_token()}"}
    products = await (await client.get(f"/ucloud/{PROVIDER}/jobs/retrieveProducts", headers=headers)).json()
    assert all("timeExtension" not in support["native"] for support in products["responses"])
