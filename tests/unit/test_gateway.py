"""The gateway's protocol surface, with Kubernetes faked in memory (the integration tier uses the real one)."""

from __future__ import annotations

import asyncio
import time
import typing
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr
from pytest_aiohttp import AiohttpClient

from tests.support.fake_kube import FakeKube, play_instance_bridge
from ucim.common.informer import Informer
from ucim.common.kube import InvalidError, Kube, UnavailableError
from ucim.common.protocol import BulkResponse, Empty, Job, JobSupport, SimpleDuration, dump, encode_username
from ucim.common.resources import MAX_NODES, MAX_TIME_LIMIT_MINUTES, MAX_USERNAME_LENGTH, Lease, UCloudJob, UserInstance
from ucim.gateway.app import init_app
from ucim.gateway.instances import Instances
from ucim.gateway.settings import GatewaySettings
from ucim.testing import CoreStandIn
from ucim.testing.core_standin import POLLED_PATHS, CoreKeys, token_claims, unsigned_token

PROVIDER = "ucim"
NAMESPACE = "ucim"


@pytest.fixture
async def client(core: CoreStandIn, kube: FakeKube, aiohttp_client: AiohttpClient) -> TestClient[Any, Any]:
    settings = GatewaySettings(
        core_public_key=SecretStr(core.keys.public_key_b64()),
        provider_id=PROVIDER,
        namespace=NAMESPACE,
        init_wait_seconds=0.1,
        submit_wait_seconds=0.1,
    )
    return await aiohttp_client(init_app(settings, kube=typing.cast(Kube, kube)))


def headers(core: CoreStandIn, username: str | None = None, token: str | None = None) -> dict[str, str]:
    result = {"Authorization": f"Bearer {token if token is not None else core.mint_service_token()}"}
    if username is not None:
        result["UCloud-Username"] = encode_username(username)
    return result


async def make_ready(kube: FakeKube, username: str) -> None:
    name = UserInstance.name_for(username, "local")
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "InstanceServing",
        "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    if await kube.get(UserInstance, NAMESPACE, name) is None:
        await kube.create(
            UserInstance.from_obj(
                {"metadata": {"name": name}, "spec": {"ucloudUsername": username, "cluster": "local"}}
            ),
            NAMESPACE,
        )
    await kube.patch_status(UserInstance, NAMESPACE, name, {"conditions": [ready]})


async def test_probes_and_metrics_need_no_token(client: TestClient[Any, Any]) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await client.get(path)).status == 200


@pytest.mark.parametrize(
    "forge",
    [
        lambda core: "",
        lambda core: "not-a-jwt",
        lambda core: core.mint_service_token(signed_by=CoreKeys.generate()),
        lambda core: core.mint_service_token(expires_in=-120),
        lambda core: core.mint_service_token(subject="alice"),
        lambda core: core.mint_service_token(role="USER"),
        lambda core: core.mint_service_token(issuer="evil.example"),
        lambda core: unsigned_token(token_claims(subject="_UCloud", role="SERVICE", principal_type="service")),
        lambda core: core.mint_service_token(extra_claims={"exp": str(int(time.time()) + 600)}),
    ],
    ids=["empty", "garbage", "wrong-key", "expired", "wrong-sub", "wrong-role", "wrong-issuer", "alg-none", "exp-text"],
)
async def test_bad_tokens_get_401_with_a_reason(client: TestClient[Any, Any], core: CoreStandIn, forge: Any) -> None:
    response = await client.get(
        f"/ucloud/{PROVIDER}/jobs/retrieveProducts", headers=headers(core, "alice", forge(core))
    )
    assert response.status == 401
    body = await response.json()
    assert body["statusCode"] == 401 and body["why"]


@pytest.mark.parametrize(
    ("method", "path", "status", "why"),
    [
        ("GET", f"/ucloud/{PROVIDER}/shares/retrieveProducts", 404, f"no endpoint GET /ucloud/{PROVIDER}/shares/"),
        ("POST", f"/ucloud/{PROVIDER}/nope", 404, f"no endpoint POST /ucloud/{PROVIDER}/nope"),
        ("GET", "/ucloud/another-provider/jobs/retrieveProducts", 404, "no endpoint GET /ucloud/another-provider/"),
        ("POST", f"/ucloud/{PROVIDER}/jobs/retrieveProducts", 405, "POST is not allowed on /ucloud/ucim/jobs/"),
        ("DELETE", f"/ucloud/{PROVIDER}/jobs", 405, "; use POST"),
    ],
)
async def test_unknown_endpoints_answer_in_the_error_envelope(
    client: TestClient[Any, Any], core: CoreStandIn, *, method: str, path: str, status: int, why: str
) -> None:
    response = await client.request(method, path, headers=headers(core, "alice"), json={})
    assert response.status == status
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"statusCode", "why", "errorCode", "detailedCode"}
    assert body["statusCode"] == status and why in body["why"]
    if status == 405:
        assert response.headers["Allow"]


async def test_username_header_without_jwt_is_refused(client: TestClient[Any, Any]) -> None:
    response = await client.post(
        f"/ucloud/{PROVIDER}/jobs", headers={"UCloud-Username": encode_username("alice")}, json={}
    )
    assert response.status == 401


async def test_retrieve_products_lists_the_machine_types(client: TestClient[Any, Any], core: CoreStandIn) -> None:
    response = await client.get(f"/ucloud/{PROVIDER}/jobs/retrieveProducts", headers=headers(core))
    assert response.status == 200
    supports = (await response.json())["responses"]
    assert {s["product"]["id"] for s in supports} == {"cpu-1", "cpu-2", "short-1"}
    # Core offers a job's output to follow, and a terminal in it.
    # ... and extending its time limit (the site's policy enables it by default).
    assert supports[0]["native"] == {"enabled": True, "logs": True, "terminal": True, "timeExtension": True}
    assert supports[0]["docker"] == {}


@pytest.mark.parametrize("resource_type", ["ingresses", "networkips", "licenses", "private-networks"])
async def test_types_not_offered_list_no_products(
    client: TestClient[Any, Any], core: CoreStandIn, resource_type: str
) -> None:
    response = await client.get(f"/ucloud/{PROVIDER}/{resource_type}/retrieveProducts", headers=headers(core))
    assert response.status == 200
    # What Go writes for an empty BulkResponse (omitempty), as IM2 answers; Core reads no products.
    assert await response.json() == {}
    assert BulkResponse[JobSupport].model_validate({}).responses == []


async def test_the_branding_is_the_protocols_shape(client: TestClient[Any, Any], core: CoreStandIn) -> None:
    response = await client.get(f"/ucloud/{PROVIDER}/provider/branding/retrieveInfo", headers=headers(core))
    assert response.status == 200
    assert await response.json() == {
        "id": PROVIDER,
        "title": PROVIDER,
        "shortTitle": PROVIDER,
        "shortDescription": "",
        "description": "",
        "url": "",
        "logo": None,
        "sections": [],
        "productDescription": [],
    }


async def test_every_poll_of_core_is_answered(client: TestClient[Any, Any], core: CoreStandIn) -> None:
    """Core polls these every 10 s; none may fail (the real Core saw four 404s and a branding 404)."""
    core.provider_url = str(client.make_url("/"))
    async with core:
        statuses = await core.poll_provider()
        branding = await core.retrieve_branding()
    assert statuses == dict.fromkeys(POLLED_PATHS, 200)
    assert branding.id == PROVIDER


async def test_user_without_a_ready_instance_gets_449(client: TestClient[Any, Any], core: CoreStandIn) -> None:
    job = core.make_job("1", "alice")
    response = await client.post(
        f"/ucloud/{PROVIDER}/jobs", headers=headers(core, "alice"), json={"items": [dump(job)]}
    )
    assert response.status == 449


async def test_a_kubernetes_api_that_times_out_is_a_readable_503(
    client: TestClient[Any, Any], core: CoreStandIn, kube: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def silent(*_: object) -> None:
        raise TimeoutError

    monkeypatch.setattr(kube, "get", silent)
    job = core.make_job("1", "alice")
    response = await client.post(
        f"/ucloud/{PROVIDER}/jobs", headers=headers(core, "alice"), json={"items": [dump(job)]}
    )
    assert response.status == 503
    assert "did not answer in time" in (await response.json())["why"]


async def test_an_apiserver_that_is_down_is_a_readable_503(
    client: TestClient[Any, Any], core: CoreStandIn, kube: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The apiserver drill: while it restarted, every create was a 500 "internal server error", which Core does
    # not retry.
    async def refused(*_: object) -> None:
        raise UnavailableError("the Kubernetes API cannot be reached: Cannot connect to host 127.0.0.1:6443")

    monkeypatch.setattr(kube, "get", refused)
    job = core.make_job("1", "alice")
    response = await client.post(
        f"/ucloud/{PROVIDER}/jobs", headers=headers(core, "alice"), json={"items": [dump(job)]}
    )
    assert response.status == 503
    assert "cannot be reached" in (await response.json())["why"]


async def test_init_creates_the_instance_whatever_the_headers(
    client: TestClient[Any, Any], core: CoreStandIn, kube: FakeKube
) -> None:
    name = UserInstance.name_for("alice#1234", "local")
    serve = asyncio.create_task(play_instance_bridge(kube, NAMESPACE, name))
    response = await client.post(
        f"/ucloud/{PROVIDER}/integration/init", headers=headers(core, "alice#1234"), json={"username": "alice#1234"}
    )
    await serve
    assert response.status == 200
    instance = await kube.get(UserInstance, NAMESPACE, name)
    assert instance is not None and instance.spec.ucloud_username == "alice#1234"
    assert instance.metadata.labels == {"ucim.io/cluster": "local"}


async def test_init_says_503_while_the_instance_is_not_ready(
    client: TestClient[Any, Any], core: CoreStandIn, kube: FakeKube
) -> None:
    # A 200 would end Core's retries while every call fails; Core retries on 503 (and 449).
    response = await client.post(
        f"/ucloud/{PROVIDER}/integration/init", headers=headers(core), json={"username": "carol"}
    )
    assert response.status == 503
    assert "not ready" in (await response.json())["why"]
    assert await kube.get(UserInstance, NAMESPACE, UserInstance.name_for("carol", "local")) is not None


async def test_init_reports_a_refused_mapping(client: TestClient[Any, Any], core: CoreStandIn, kube: FakeKube) -> None:
    await client.post(f"/ucloud/{PROVIDER}/integration/init", headers=headers(core), json={"username": "root"})
    refused = {
        "type": "Mapped",
        "status": "False",
        "reason": "MappingRefused",
        "message": "uid 0 is below the minimum 1000",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    await kube.patch_status(UserInstance, NAMESPACE, UserInstance.name_for("root", "local"), {"conditions": [refused]})
    response = await client.post(
        f"/ucloud/{PROVIDER}/integration/init", headers=headers(core), json={"username": "root"}
    )
    assert response.status == 403
    assert "below the minimum" in (await response.json())["why"]


async def test_create_is_idempotent_per_ucloud_job_id(
    client: TestClient[Any, Any], core: CoreStandIn, kube: FakeKube
) -> None:
    await make_ready(kube, "alice")
    job = core.make_job("4711", "alice", ("run-command", "1"), {"command": "echo hi"})
    for _ in range(2):
        response = await client.post(
            f"/ucloud/{PROVIDER}/jobs", headers=headers(core, "alice"), json={"items": [dump(job)]}
        )
        assert response.status == 200
        assert (await response.json())["responses"] == [{"id": UCloudJob.name_for("4711")}]
    jobs = [key for key in kube.objects if key[0] == "ucloudjobs"]
    assert len(jobs) == 1
    stored = await kube.get(UCloudJob, NAMESPACE, UCloudJob.name_for("4711"))
    assert stored is not None
    assert stored.spec.slurm is not None and stored.spec.slurm.partition == "normal"
    assert stored.spec.parameters is not None and stored.spec.parameters["command"].value == "echo hi"


async def test_unknown_product_is_a_readable_400(
    client: TestClient[Any, Any], core: CoreStandIn, kube: FakeKube
) -> None:
    await make_ready(kube, "alice")
    job = core.make_job("1", "alice")
    job.specification.product.id = "gpu-9000"
    response = await client.post(
        f"/ucloud/{PROVIDER}/jobs", headers=headers(core, "alice"), json={"items": [dump(job)]}
    )
    assert response.status == 400
    assert "Unknown product 'gpu-9000'" in (await response.json())["why"]
    assert not [key for key in kube.objects if key[0] == "ucloudjobs"]


async def test_invalid_body_is_a_readable_400(client: TestClient[Any, Any], core: CoreStandIn, kube: FakeKube) -> None:
    await make_ready(kube, "alice")
    response = await client.post(
        f"/ucloud/{PROVIDER}/jobs", headers=headers(core, "alice"), json={"items": [{"id": "1"}]}
    )
    assert response.status == 400
    assert "Invalid request: items.0.createdAt" in (await response.json())["why"]


async def test_terminate_marks_the_job(client: TestClient[Any, Any], core: CoreStandIn, kube: FakeKube) -> None:
    await make_ready(kube, "alice")
    job = core.make_job("77", "alice")
    await client.post(f"/ucloud/{PROVIDER}/jobs", headers=headers(core, "alice"), json={"items": [dump(job)]})
    response = await client.post(
        f"/ucloud/{PROVIDER}/jobs/terminate", headers=headers(core, "alice"), json={"items": [dump(job)]}
    )
    assert response.status == 200
    stored = await kube.get(UCloudJob, NAMESPACE, UCloudJob.name_for("77"))
    assert stored is not None and stored.spec.terminate is True


async def test_terminating_a_job_the_provider_does_not_know_is_done(
    client: TestClient[Any, Any], core: CoreStandIn, kube: FakeKube
) -> None:
    """IM2 answers 200 when the job is gone from Slurm; Core must not see a failure for a job that cannot run."""
    await make_ready(kube, "alice")
    known, unknown = core.make_job("77", "alice"), core.make_job("78", "alice")
    await client.post(f"/ucloud/{PROVIDER}/jobs", headers=headers(core, "alice"), json={"items": [dump(known)]})
    response = await client.post(
        f"/ucloud/{PROVIDER}/jobs/terminate",
        headers=headers(core, "alice"),
        json={"items": [dump(unknown), dump(known)]},
    )
    assert response.status == 200
    assert BulkResponse[Empty].model_validate(await response.json()).responses == [Empty(), Empty()]
    stored = await kube.get(UCloudJob, NAMESPACE, UCloudJob.name_for("77"))
    assert stored is not None and stored.spec.terminate is True
    assert await kube.get(UCloudJob, NAMESPACE, UCloudJob.name_for("78")) is None


async def test_suspension_is_refused_in_words(client: TestClient[Any, Any], core: CoreStandIn) -> None:
    response = await client.post(f"/ucloud/{PROVIDER}/jobs/suspend", headers=headers(core), json={"items": []})
    assert response.status == 400
    assert "not supported" in (await response.json())["why"]


# --- what a job may ask for: checked before anything is written -------------------------------------------


async def post_job(client: TestClient[Any, Any], core: CoreStandIn, job: Job, username: str | None = "alice") -> Any:
    return await client.post(f"/ucloud/{PROVIDER}/jobs", headers=headers(core, username), json={"items": [dump(job)]})


def stored_jobs(kube: FakeKube) -> list[Any]:
    return [key for key in kube.objects if key[0] == "ucloudjobs"]


@pytest.mark.parametrize(
    ("allocation", "why"),
    [
        (SimpleDuration(hours=-1), "time allocation of -1 h 0 min 0 s; it must be positive"),
        (SimpleDuration(hours=1, minutes=-60), "time allocation of 1 h -60 min 0 s; it must be positive"),
        (SimpleDuration(hours=0), "it must be positive"),
        (SimpleDuration(hours=10**30), f"at most {MAX_TIME_LIMIT_MINUTES} (about 68 years"),
        (SimpleDuration(hours=10**400), f"at most {MAX_TIME_LIMIT_MINUTES}"),
        (SimpleDuration(minutes=MAX_TIME_LIMIT_MINUTES, seconds=1), f"{MAX_TIME_LIMIT_MINUTES + 1} minutes; at most"),
    ],
    ids=["negative", "negative-total", "zero", "huge", "beyond-floats", "one-minute-over"],
)
async def test_time_allocations_slurm_cannot_take_are_a_readable_400(
    client: TestClient[Any, Any], core: CoreStandIn, kube: FakeKube, allocation: SimpleDuration, why: str
) -> None:
    await make_ready(kube, "alice")
    response = await post_job(client, core, core.make_job("1", "alice", time_allocation=allocation))
    assert response.status == 400
    assert why in (await response.json())["why"]
    assert not stored_jobs(kube)


async def test_the_longest_time_limit_slurm_takes_is_kept(
    client: TestClient[Any, Any], core: CoreStandIn, kube: FakeKube
) -> None:
    await make_ready(kube, "alice")
    job = core.make_job("1", "alice", time_allocation=SimpleDuration(minutes=MAX_TIME_LIMIT_MINUTES))
    assert (await post_job(client, core, job)).status == 200
    stored = await kube.get(UCloudJob, NAMESPACE, UCloudJob.name_for("1"))
    assert stored is not None and stored.spec.resources.time_limit_minutes == MAX_TIME_LIMIT_MINUTES


async def test_more_nodes_than_the_crd_allows_is_a_readable_400(
    client: TestClient[Any, Any], core: CoreStandIn, kube: FakeKube
) -> None:
    await make_ready(kube, "alice")
    response = await post_job(client, core, core.make_job("1", "alice", replicas=MAX_NODES + 1))
    assert response.status == 400
    assert f"asks for {MAX_NODES + 1} nodes; from 1 to {MAX_NODES} are allowed" in (await response.json())["why"]
    assert not stored_jobs(kube)


async def test_a_value_beyond_a_crd_limit_is_a_400_before_the_apiserver_sees_it(
    client: TestClient[Any, Any], core: CoreStandIn, kube: FakeKube
) -> None:
    await make_ready(kube, "alice")
    response = await post_job(client, core, core.make_job("1", "alice", project="p" * 257))
    assert response.status == 400
    why = (await response.json())["why"]
    assert "Job 1 cannot be stored: UCloudJobSpec project: String should have at most 256 characters" in why
    assert not stored_jobs(kube)


async def test_an_apiserver_refusal_is_a_400_with_its_message(
    client: TestClient[Any, Any], core: CoreStandIn, kube: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refuse(*_: object) -> None:
        raise InvalidError('UCloudJob.ucim.io "x" is invalid: spec.owner: Too long: may not be longer than 256')

    await make_ready(kube, "alice")
    monkeypatch.setattr(kube, "create", refuse)
    response = await post_job(client, core, core.make_job("1", "alice"))
    assert response.status == 400
    assert "spec.owner: Too long: may not be longer than 256" in (await response.json())["why"]


async def test_a_job_whose_owner_is_not_the_acting_user_is_refused(
    client: TestClient[Any, Any], core: CoreStandIn, kube: FakeKube
) -> None:
    """Core starts a job as its creator (owner.createdBy) and acts for that same user; a mismatch runs as neither."""
    await make_ready(kube, "alice")
    response = await post_job(client, core, core.make_job("1", "bob"), username="alice")
    assert response.status == 400
    assert "Job 1 belongs to 'bob' but the request acts for 'alice'" in (await response.json())["why"]
    assert not stored_jobs(kube)


# --- usernames: the CRDs keep at most 256 characters ---------------------------------------------------


LONG_NAME = "a" * (MAX_USERNAME_LENGTH + 1)


@pytest.mark.parametrize("operation", ["init", "connect", "unlinked"])
async def test_an_over_long_username_in_integration_calls_is_a_readable_400(
    client: TestClient[Any, Any], core: CoreStandIn, kube: FakeKube, operation: str
) -> None:
    response = await client.post(
        f"/ucloud/{PROVIDER}/integration/{operation}", headers=headers(core), json={"username": LONG_NAME}
    )
    assert response.status == 400
    why = (await response.json())["why"]
    assert f"is {MAX_USERNAME_LENGTH + 1} characters long; at most {MAX_USERNAME_LENGTH} are allowed" in why
    assert not kube.objects


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "jobs"), ("POST", "jobs/terminate"), ("POST", "files/browse"), ("POST", "files/upload")],
)
async def test_an_over_long_acting_user_is_a_400_not_449(
    client: TestClient[Any, Any], core: CoreStandIn, kube: FakeKube, method: str, path: str
) -> None:
    response = await client.request(
        method, f"/ucloud/{PROVIDER}/{path}", headers=headers(core, LONG_NAME), json={"items": []}
    )
    assert response.status == 400
    assert "The username in UCloud-Username is 257 characters long" in (await response.json())["why"]
    assert not kube.objects


async def test_an_over_long_transfer_user_is_a_readable_400(client: TestClient[Any, Any]) -> None:
    response = await client.get(
        f"/ucloud/{PROVIDER}/download", params={"token": "t", "usernameHint": encode_username(LONG_NAME)}
    )
    assert response.status == 400
    assert "The username in usernameHint is 257 characters long" in (await response.json())["why"]


async def test_create_answers_within_cores_budget_while_nothing_submits(
    core: CoreStandIn, kube: FakeKube, aiohttp_client: AiohttpClient
) -> None:
    # slurmctld or the bridge is down: the submission never settles. Core gives a call about 5 s; the
    # answer comes within the budget (the job then reports how its submission ends through updates).
    settings = GatewaySettings(
        core_public_key=SecretStr(core.keys.public_key_b64()),
        provider_id=PROVIDER,
        namespace=NAMESPACE,
        core_call_budget_seconds=0.3,
        submit_wait_seconds=10,
    )
    client = await aiohttp_client(init_app(settings, kube=typing.cast(Kube, kube)))
    await make_ready(kube, "alice")
    started = time.monotonic()
    response = await client.post(
        f"/ucloud/{PROVIDER}/jobs", headers=headers(core, "alice"), json={"items": [dump(core.make_job("77", "alice"))]}
    )
    assert response.status == 200, await response.text()
    assert time.monotonic() - started < 1.0
    assert await kube.get(UCloudJob, NAMESPACE, UCloudJob.name_for("77")) is not None


def test_an_instance_of_a_bridge_whose_lease_expired_is_not_ready() -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    leases: Informer[Lease] = Informer(typing.cast(Kube, None), Lease, NAMESPACE)
    instances = Instances(typing.cast(Kube, None), NAMESPACE, "local", 60, leases=leases, clock=lambda: now)
    ready = UserInstance.from_obj({
        "metadata": {"name": "i"},
        "spec": {"ucloudUsername": "alice", "cluster": "local"},
        "status": {"bridge": "frontend-1", "endpoint": "http://b/i", "conditions": [
            {"type": "Ready", "status": "True", "reason": "InstanceServing", "message": "",
             "lastTransitionTime": "2026-03-01T11:00:00Z"}]},
    })  # fmt: skip
    assert instances.ready(ready)  # no Lease known (yet): the bridge's word stands

    def lease(renewed: datetime) -> Lease:
        name = Lease.name_for("frontend-1")
        spec = {"holderIdentity": "frontend-1", "leaseDurationSeconds": 30, "renewTime": renewed.isoformat()}
        return Lease.from_obj({"metadata": {"name": name}, "spec": spec})

    leases.objects[Lease.name_for("frontend-1")] = lease(now - timedelta(seconds=10))
    assert instances.ready(ready)
    leases.objects[Lease.name_for("frontend-1")] = lease(now - timedelta(seconds=31))
    assert not instances.ready(ready)  # the bridge stopped renewing: its Ready is stale
