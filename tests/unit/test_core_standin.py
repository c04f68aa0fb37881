"""The UCloud/Core stand-in speaks the documented protocol on both sides."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pytest_aiohttp import AiohttpClient

from ucim.common.protocol import (
    AppParameterValue,
    DriveSpecification,
    Job,
    JobState,
    JobUpdate,
    JobUpdateItem,
    NameAndVersion,
    ProductReference,
    ProviderRegisteredResource,
    SimpleDuration,
    decode_username,
    dump,
)
from ucim.testing import CoreKeys, CoreStandIn, ProviderCallError, unsigned_token
from ucim.testing.app_yaml import ApplicationRefusedError
from ucim.testing.core_standin import _parse_args, _serve, compute_product, token_claims

FIXTURES = Path(__file__).with_name("fixtures")
PROVIDER = "hippo"
REFRESH_TOKEN = "refresh-0123456789"
T0 = 1_767_225_600_000


@pytest.fixture
def core() -> CoreStandIn:
    return CoreStandIn(PROVIDER, REFRESH_TOKEN, init_retry_delay=0.01)


@pytest.fixture
async def core_client(core: CoreStandIn, aiohttp_client: AiohttpClient) -> TestClient[Any, Any]:
    return await aiohttp_client(core.app())


def public_key_from_ucloud_key_pub(text: str) -> rsa.RSAPublicKey:
    """Read the key the way a provider reads ucloud_key.pub: base64 DER SPKI, no headers."""
    key = serialization.load_der_public_key(base64.b64decode(text.strip()))
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def decode(token: str, key: Any) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, key, algorithms=["RS256"], audience="all:write", issuer="cloud.sdu.dk")
    return claims


async def access_token(client: TestClient[Any, Any]) -> str:
    response = await client.post("/auth/providers/refresh", json={"items": [{"refreshToken": REFRESH_TOKEN}]})
    assert response.status == 200
    body = await response.json()
    token: str = body["responses"][0]["accessToken"]
    return token


def update_body(job_id: str, state: str, timestamp: Any = T0) -> dict[str, Any]:
    """An update request as a provider writes it; raw, so that tests can break it."""
    update = dump(JobUpdate(timestamp=0)) | {"state": state, "timestamp": timestamp}
    return {"items": [{"id": job_id, "update": update}]}


# --- keys and tokens ----------------------------------------------------------


def test_service_tokens_carry_cores_claims_and_verify_with_the_exported_key(core: CoreStandIn, tmp_path: Path) -> None:
    core.write_public_key(tmp_path / "ucloud_key.pub")
    core.write_public_key(tmp_path / "ucloud_crt.pem", fmt="pem")
    der_key = public_key_from_ucloud_key_pub((tmp_path / "ucloud_key.pub").read_text())
    pem_key = serialization.load_pem_public_key((tmp_path / "ucloud_crt.pem").read_bytes())

    token = core.mint_service_token()

    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    for key in (der_key, pem_key):
        claims = decode(token, key)
        assert claims["sub"] == "_UCloud"
        assert claims["role"] == "SERVICE"
        assert claims["principalType"] == "service"
        assert claims["aud"] == ["all:write"]
        assert claims["exp"] - claims["iat"] == 600


def test_forged_service_tokens_fail_verification(core: CoreStandIn) -> None:
    key = public_key_from_ucloud_key_pub(core.keys.public_key_b64())
    forgeries = {
        "another key": core.mint_service_token(signed_by=CoreKeys.generate()),
        "expired": core.mint_service_token(expires_in=-60),
        "another issuer": core.mint_service_token(issuer="evil.example"),
        "unsigned": unsigned_token(token_claims(subject="_UCloud", role="SERVICE", principal_type="service")),
    }
    for reason, token in forgeries.items():
        with pytest.raises(jwt.InvalidTokenError):
            decode(token, key)
            pytest.fail(f"{reason} token verified")


def test_other_subject_or_role_is_signed_but_says_so(core: CoreStandIn) -> None:
    key = public_key_from_ucloud_key_pub(core.keys.public_key_b64())
    claims = decode(core.mint_service_token(subject="alice", role="USER"), key)
    assert (claims["sub"], claims["role"]) == ("alice", "USER")


def test_a_saved_key_is_loaded_again(tmp_path: Path) -> None:
    path = tmp_path / "core.pem"
    first = CoreKeys.load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert CoreKeys.load_or_create(path).public_key_b64() == first.public_key_b64()


# --- the Core endpoints -------------------------------------------------------


async def test_refresh_hands_out_a_provider_token(core: CoreStandIn, core_client: TestClient[Any, Any]) -> None:
    token = await access_token(core_client)

    claims = decode(token, serialization.load_pem_public_key(core.keys.public_key_pem().encode()))
    assert claims["sub"] == "#P_hippo"
    assert claims["role"] == "PROVIDER"
    assert claims["exp"] - claims["iat"] == 600
    assert core.record.refresh_count == 1


async def test_refresh_refuses_another_token(core: CoreStandIn, core_client: TestClient[Any, Any]) -> None:
    response = await core_client.post("/auth/providers/refresh", json={"items": [{"refreshToken": "guess"}]})

    assert response.status == 401
    assert await response.json() == {"statusCode": 401, "why": "Unauthorized", "errorCode": "", "detailedCode": 0}
    assert core.record.refresh_count == 0


async def test_updates_are_recorded_in_order_per_job(core: CoreStandIn, core_client: TestClient[Any, Any]) -> None:
    headers = {"Authorization": f"Bearer {await access_token(core_client)}"}
    waiter = asyncio.create_task(core.wait_for_update("41", JobState.SUCCESS, timeout=2))

    for job_id, state, at in [("41", "IN_QUEUE", T0), ("42", "RUNNING", T0 + 1), ("41", "RUNNING", T0 + 2)]:
        response = await core_client.post(
            "/api/jobs/control/update", json=update_body(job_id, state, at), headers=headers
        )
        assert response.status == 200
    assert not waiter.done()
    await core_client.post("/api/jobs/control/update", json=update_body("41", "SUCCESS", T0 + 3), headers=headers)

    final = await waiter
    assert final.timestamp == T0 + 3
    assert [u.state for u in core.updates_for("41")] == [JobState.IN_QUEUE, JobState.RUNNING, JobState.SUCCESS]
    assert [u.state for u in core.updates_for("42")] == [JobState.RUNNING]
    # Each update carries its arrival time, for latency measurements (bench/bench_job_path.py).
    arrivals = [at for at, _ in core.record.received("41")]
    assert [u.state for _, u in core.record.received("41")] == [JobState.IN_QUEUE, JobState.RUNNING, JobState.SUCCESS]
    assert arrivals == sorted(arrivals) and abs(arrivals[-1] - time.time()) < 60


async def test_waiting_for_an_update_that_never_comes_times_out(core: CoreStandIn) -> None:
    core.record.job_updates.append(JobUpdateItem(id="7", update=JobUpdate(state=JobState.RUNNING, timestamp=T0)))
    with pytest.raises(TimeoutError, match="saw"):
        await core.wait_for_update("7", JobState.SUCCESS, timeout=0.05)
    assert (await core.wait_for_update("7", JobState.RUNNING, timeout=0.05)).timestamp == T0


@pytest.mark.parametrize(
    ("make_token", "status"),
    [
        (lambda core: None, 401),
        (lambda core: core.mint_service_token(), 403),  # a valid Core token, but not a provider's
        (lambda core: CoreStandIn(PROVIDER, REFRESH_TOKEN).mint_provider_token(), 401),  # another Core's key
        (lambda core: core.mint_provider_token(expires_in=-1), 401),
    ],
)
async def test_updates_need_this_providers_access_token(
    core: CoreStandIn,
    core_client: TestClient[Any, Any],
    make_token: Callable[[CoreStandIn], str | None],
    status: int,
) -> None:
    token = make_token(core)
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    response = await core_client.post("/api/jobs/control/update", json=update_body("1", "RUNNING"), headers=headers)

    assert response.status == status
    assert (await response.json())["statusCode"] == status
    assert core.record.job_updates == []


@pytest.mark.parametrize(
    "body",
    [
        update_body("1", "RUNNING", timestamp=1.5),
        update_body("1", "NOT_A_STATE"),
        {"items": [{"id": "1", "update": {"state": "RUNNING", "timestamp": T0}}]},  # keys left out
    ],
)
async def test_malformed_updates_are_refused(
    core: CoreStandIn, core_client: TestClient[Any, Any], body: dict[str, Any]
) -> None:
    headers = {"Authorization": f"Bearer {await access_token(core_client)}"}

    response = await core_client.post("/api/jobs/control/update", json=body, headers=headers)

    assert response.status == 400
    assert (await response.json())["why"].startswith("Invalid request supplied")
    assert core.record.job_updates == []


async def test_injected_failures_answer_5xx_for_a_number_of_requests(
    core: CoreStandIn, core_client: TestClient[Any, Any]
) -> None:
    headers = {"Authorization": f"Bearer {await access_token(core_client)}"}
    core.fail_requests(times=2, status=502)

    statuses = []
    for _ in range(3):
        response = await core_client.post("/api/jobs/control/update", json=update_body("1", "RUNNING"), headers=headers)
        statuses.append(response.status)

    assert statuses == [502, 502, 200]
    assert core.record.requests["/api/jobs/control/update"] == 3
    assert len(core.updates_for("1")) == 1


async def test_injected_failures_can_last_for_a_while(core: CoreStandIn, core_client: TestClient[Any, Any]) -> None:
    headers = {"Authorization": f"Bearer {await access_token(core_client)}"}
    core.fail_requests(seconds=0.1)

    first = await core_client.post("/api/jobs/control/update", json=update_body("1", "RUNNING"), headers=headers)
    await asyncio.sleep(0.15)
    second = await core_client.post("/api/jobs/control/update", json=update_body("1", "RUNNING"), headers=headers)

    assert (first.status, second.status) == (503, 200)


async def test_injected_disconnects_drop_the_connection(core: CoreStandIn, core_client: TestClient[Any, Any]) -> None:
    headers = {"Authorization": f"Bearer {await access_token(core_client)}"}
    core.fail_requests(mode="disconnect", times=1)

    with pytest.raises(aiohttp.ClientConnectionError):
        await core_client.post("/api/jobs/control/update", json=update_body("1", "RUNNING"), headers=headers)
    response = await core_client.post("/api/jobs/control/update", json=update_body("1", "RUNNING"), headers=headers)
    assert response.status == 200


async def test_going_offline_refuses_connections_until_back_online(core: CoreStandIn) -> None:
    async with core:
        url = await core.start()
        async with aiohttp.ClientSession() as session:
            refresh = {"items": [{"refreshToken": REFRESH_TOKEN}]}
            assert (await session.post(f"{url}/auth/providers/refresh", json=refresh)).status == 200

            await core.go_offline()
            with pytest.raises(aiohttp.ClientConnectionError):
                await session.post(f"{url}/auth/providers/refresh", json=refresh)
            async with aiohttp.ClientSession() as fresh:
                with pytest.raises(aiohttp.ClientConnectorError):
                    await fresh.post(f"{url}/auth/providers/refresh", json=refresh)

            await core.go_online()
            assert core.url == url
            assert (await session.post(f"{url}/auth/providers/refresh", json=refresh)).status == 200


async def test_products_and_connections_are_recorded(core: CoreStandIn, core_client: TestClient[Any, Any]) -> None:
    headers = {"Authorization": f"Bearer {await access_token(core_client)}"}
    product = compute_product(ProductReference(id="u1-2", category="u1", provider=PROVIDER), cpu=2)

    responses = [
        await core_client.post("/api/products/v2", json={"items": [dump(product)]}, headers=headers),
        await core_client.post(
            "/api/providers/integration/control/approveConnection", json={"username": "alice"}, headers=headers
        ),
        await core_client.post(
            "/api/providers/integration/control/clearConnection", json={"username": "bob"}, headers=headers
        ),
    ]

    assert [r.status for r in responses] == [200, 200, 200]
    assert core.record.products == [product]
    assert core.record.approved_connections == ["alice"]
    assert core.record.cleared_connections == ["bob"]
    await core.record.wait_for_cleared("bob", 0.1)  # what tests of an asynchronous clear wait on
    with pytest.raises(TimeoutError, match="no clearConnection of alice"):
        await core.record.wait_for_cleared("alice", 0.05)


async def test_unknown_paths_answer_in_the_error_envelope(core_client: TestClient[Any, Any]) -> None:
    response = await core_client.get("/api/nothing/here")
    assert response.status == 404
    assert (await response.json())["statusCode"] == 404


# --- calling the provider -----------------------------------------------------


@dataclass
class FakeProvider:
    """A provider whose users become ready after some init calls."""

    public_key: Any
    inits_until_ready: int = 2
    job_calls: int = 0
    init_calls: list[tuple[str, str | None]] = field(default_factory=list)  # (body username, header username)
    ready: set[str] = field(default_factory=set)
    received_jobs: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(f"/ucloud/{PROVIDER}/jobs", self.create)
        app.router.add_post(f"/ucloud/{PROVIDER}/integration/init", self.init)
        app.router.add_get(f"/ucloud/{PROVIDER}/jobs/retrieveProducts", self.products)
        return app

    def authenticate(self, request: web.Request) -> str | None:
        token = request.headers["Authorization"].removeprefix("Bearer ")
        claims = decode(token, self.public_key)
        assert (claims["sub"], claims["role"]) == ("_UCloud", "SERVICE")
        header = request.headers.get("UCloud-Username")
        return decode_username(header) if header else None

    async def create(self, request: web.Request) -> web.Response:
        user = self.authenticate(request)
        self.job_calls += 1
        if user not in self.ready:
            return web.json_response({"why": "not ready"}, status=449)
        items = (await request.json())["items"]
        self.received_jobs.extend(items)
        return web.json_response({"responses": [{"id": f"acct/{i + 100}/1"} for i, _ in enumerate(items)]})

    async def init(self, request: web.Request) -> web.Response:
        header_user = self.authenticate(request)
        username = (await request.json())["username"]
        self.init_calls.append((username, header_user))
        if len(self.init_calls) >= self.inits_until_ready:
            self.ready.add(username)
        return web.json_response({})

    async def products(self, request: web.Request) -> web.Response:
        assert self.authenticate(request) is None
        support = {"product": {"id": "u1-2", "category": "u1", "provider": PROVIDER}, "native": {"enabled": True}}
        return web.json_response({"responses": [support]})


@pytest.fixture
async def provider(core: CoreStandIn, aiohttp_client: AiohttpClient) -> FakeProvider:
    fake = FakeProvider(public_key=public_key_from_ucloud_key_pub(core.keys.public_key_b64()))
    client = await aiohttp_client(fake.app())
    core.provider_url = str(client.make_url("/"))
    return fake


async def test_user_not_ready_leads_to_init_and_a_retry(core: CoreStandIn, provider: FakeProvider) -> None:
    job = core.make_job("4211", "alice#4821", ("parameter-mix", "1"), {"label": "hello", "iterations": 3})

    async with core:
        ids = await core.create_jobs([job])

    assert [i.id for i in ids] == ["acct/100/1"]
    assert provider.job_calls == 3  # 449, 449, then ready
    assert provider.init_calls == [("alice#4821", "alice#4821"), ("alice#4821", "alice#4821")]
    received = Job.model_validate(provider.received_jobs[0])
    assert received == job
    assert received.specification.parameters == {
        "ucMetricSampleRate": AppParameterValue.text("0ms"),
        "label": AppParameterValue.text("hello"),
        "iterations": AppParameterValue.integer(3),
    }


async def test_every_call_to_the_provider_is_recorded_with_its_answer(
    core: CoreStandIn, provider: FakeProvider
) -> None:
    job = core.make_job("4212", "alice")

    async with core:
        await core.create_jobs([job])
        core.provider_url = "http://127.0.0.1:9"  # nothing listens there
        with pytest.raises(aiohttp.ClientError):
            await core.create_jobs([job])

    calls = core.record.provider_calls
    assert [(c.path, c.job_ids, c.status) for c in calls] == [
        ("jobs", ("4212",), 449),
        ("integration/init", (), 200),
        ("jobs", ("4212",), 449),
        ("integration/init", (), 200),
        ("jobs", ("4212",), 200),
        ("jobs", ("4212",), None),
    ]
    assert calls[0].why == "not ready"
    assert calls[-1].why.startswith("no answer: ClientConnectorError")
    assert all(0 <= c.seconds < 5 for c in calls)


async def test_the_retry_loop_gives_up_after_five_inits(core: CoreStandIn, provider: FakeProvider) -> None:
    provider.inits_until_ready = 1_000

    async with core:
        response = await core.call_provider("POST", "jobs", json={"items": []}, username="bob")
        with pytest.raises(ProviderCallError, match="449"):
            response.raise_for_status()

    assert response.status == 449
    assert len(provider.init_calls) == 5
    assert provider.job_calls == 6


async def test_calls_without_a_user_are_not_retried(core: CoreStandIn, provider: FakeProvider) -> None:
    async with core:
        response = await core.call_provider("POST", "jobs", json={"items": []})

    assert response.status == 449
    assert provider.init_calls == []


async def test_init_can_be_sent_without_the_username_header(core: CoreStandIn, provider: FakeProvider) -> None:
    core.init_sends_username_header = False  # as the older Kotlin Core did
    async with core:
        await core.create_jobs([core.make_job("1", "carol")])
    assert provider.init_calls == [("carol", None), ("carol", None)]


async def test_retrieve_products_reads_the_support_flags(core: CoreStandIn, provider: FakeProvider) -> None:
    async with core:
        (support,) = await core.retrieve_products()
    assert support.product.id == "u1-2"
    assert support.native.enabled is True
    assert support.native.logs is False


async def test_a_poll_round_asks_what_core_asks_without_a_user(core: CoreStandIn, provider: FakeProvider) -> None:
    async with core:
        statuses = await core.poll_provider()
    assert list(statuses) == [
        "integration/retrieveManifest",
        "files/collections/retrieveProducts",
        "jobs/retrieveProducts",
        "ingresses/retrieveProducts",
        "networkips/retrieveProducts",
        "licenses/retrieveProducts",
        "private-networks/retrieveProducts",
        "provider/branding/retrieveInfo",
    ]
    # The fake provider serves only the jobs' products (and checks there is no user); a failed poll is reported.
    assert {path for path, status in statuses.items() if status == 200} == {"jobs/retrieveProducts"}
    assert provider.init_calls == []


def test_make_job_builds_what_core_sends(core: CoreStandIn) -> None:
    job = core.make_job("9", "alice", ("parameter-mix", "1"), {"verbose": True}, project="p-1")
    wire = dump(job)

    assert Job.model_validate(wire) == job
    assert wire["specification"]["product"]["provider"] == PROVIDER
    assert wire["specification"]["parameters"]["verbose"]["type"] == "boolean"
    assert wire["specification"]["timeAllocation"] == {"hours": 1, "minutes": 0, "seconds": 0}
    assert wire["owner"] == {"createdBy": "alice", "project": "p-1"}
    assert wire["status"]["resolvedApplication"]["invocation"]["tool"]["tool"]["description"]["backend"] == "NATIVE"
    assert wire["status"]["resolvedSupport"]["support"]["native"] == {"enabled": True, "logs": True}
    assert wire["status"]["jobParametersJson"]["request"]["application"] == {"name": "parameter-mix", "version": "1"}
    assert isinstance(wire["createdAt"], int)


def test_make_job_adds_cores_own_parameter_as_core_does(core: CoreStandIn) -> None:
    """Core adds ucMetricSampleRate after storing the request; no application declares it; a user's value stays."""
    wire = dump(core.make_job("9", "alice", ("parameter-mix", "1"), {"verbose": True}))
    added = wire["specification"]["parameters"]["ucMetricSampleRate"]
    assert (added["type"], added["value"]) == ("text", "0ms")
    assert set(wire["status"]["jobParametersJson"]["request"]["parameters"]) == {"verbose"}
    declared = wire["status"]["resolvedApplication"]["invocation"]["parameters"]
    assert "ucMetricSampleRate" not in [p["name"] for p in declared]
    chosen = core.make_job("9", "alice", parameters={"ucMetricSampleRate": "1000ms"})
    assert chosen.specification.parameters is not None
    assert chosen.specification.parameters["ucMetricSampleRate"].value == "1000ms"


# --- applications -------------------------------------------------------------

WORD_COUNT_2 = """\
application: v2
name: word-count
version: "2"
software: {type: Native, load: [{name: python, version: "3.12"}]}
parameters:
  input: {type: File, title: Input}
invocation: wc -w {{ input }}
"""


def test_a_job_carries_the_application_core_holds(core: CoreStandIn) -> None:
    files = {"input": AppParameterValue.file("/100/in.txt", read_only=True), "output": AppParameterValue.file("/100")}
    job = core.make_job("9", "alice", ("word-count", "1"), files)
    held = core.applications.applications[("word-count", "1")]
    assert job.status.resolved_application == held
    assert job.status.resolved_application is not held  # a copy: a test may change its job
    assert core.make_job("10", "alice").specification.application.name == "sleep-exit"  # every parameter optional


def test_make_job_sends_what_core2_sent() -> None:
    """fixtures/core2_job_hello_py.json, the same submission made with make_job (only the product is the stand-in's)."""
    real = json.loads((FIXTURES / "core2_job_hello_py.json").read_text())["items"][0]
    core = CoreStandIn("ucim", REFRESH_TOKEN)
    job = core.make_job(
        real["id"],
        "alice",
        ("hello-py", "3.11"),
        {"input": AppParameterValue.file("/4/data/in.csv")},
        ProductReference(id="cpu-2", category="cpu", provider="ucim"),
        name="apps-hello-py",
        time_allocation=SimpleDuration(hours=1, minutes=30),
        created_at=real["createdAt"],
    )
    application = job.status.resolved_application
    assert application is not None and application.invocation.tool.tool is not None
    application.metadata.created_at = real["status"]["resolvedApplication"]["metadata"]["createdAt"]
    application.invocation.tool.tool.created_at = application.invocation.tool.tool.modified_at = (
        application.metadata.created_at
    )
    wire = dump(job)
    for key in ("id", "createdAt", "owner", "permissions", "updates", "specification", "output"):
        assert wire[key] == real[key], key
    for key in ("state", "startedAt", "expiresAt", "resolvedApplication", "allowRestart"):
        assert wire["status"][key] == real["status"][key], key
    assert wire["status"]["resolvedSupport"]["features"][0] == "jobs.native.enabled"
    assert (
        wire["status"]["jobParametersJson"]["request"]["parameters"]
        == real["status"]["jobParametersJson"]["request"]["parameters"]
    )


def test_make_job_refuses_what_core_refuses(core: CoreStandIn) -> None:
    with pytest.raises(ValueError, match=r"Unknown application requested: jupyter@4\.0"):
        core.make_job("9", "alice", ("jupyter", "4.0"))
    with pytest.raises(ValueError, match="Unknown parameter supplied: 'message'"):
        core.make_job("9", "alice", ("sleep-exit", "1"), {"message": "hi"})
    with pytest.raises(ValueError, match="Incorrect parameter type for 'seconds'"):
        core.make_job("9", "alice", ("sleep-exit", "1"), {"seconds": "1"})
    with pytest.raises(ValueError, match="Missing value for 'command'"):
        core.make_job("9", "alice", ("run-command", "1"))
    # A provider's own defences are tested with what Core never sends.
    odd = core.make_job("9", "alice", ("sleep-exit", "1"), {"seconds": "1"}, check_parameters=False)
    assert odd.specification.parameters is not None
    assert odd.specification.parameters["seconds"].type == "text"


def test_the_time_asked_for_is_the_web_clients_default(core: CoreStandIn) -> None:
    """The web client fills max(1, the tool's default hours); a test's own allocation is kept."""
    application = core.applications.resolve(NameAndVersion(name="sleep-exit", version="1"))
    assert application.invocation.tool.tool is not None
    application.invocation.tool.tool.description.default_time_allocation = SimpleDuration(hours=5, minutes=30)
    job = core.make_job("9", "alice", resolved_application=application)
    assert job.specification.time_allocation == SimpleDuration(hours=5)
    given = core.make_job("9", "alice", time_allocation=SimpleDuration(minutes=2))
    assert given.specification.time_allocation == SimpleDuration(minutes=2)


async def test_applications_are_uploaded_as_core_takes_them(
    core: CoreStandIn, core_client: TestClient[Any, Any]
) -> None:
    upload = "/api/hpc/apps/upload"
    response = await core_client.put(upload, data=WORD_COUNT_2.encode())
    assert (response.status, await response.json()) == (200, {})
    job = core.make_job("9", "bob", ("word-count", "2"), {"input": AppParameterValue.file("/100/in.txt")})
    assert job.status.resolved_application is not None
    assert job.status.resolved_application.invocation.invocation is not None
    assert job.status.resolved_application.invocation.invocation[0].template == "wc -w {{ input }}"

    again = await core_client.put(upload, data=WORD_COUNT_2.encode())
    broken = await core_client.put(upload, data=WORD_COUNT_2.replace("type: File", "type: Fil").encode())
    not_utf8 = await core_client.put(upload, data=b"application: v2\nname: \xff\n")
    assert (again.status, (await again.json())["why"]) == (409, "A tool with this version already exist")
    assert not_utf8.status == 400
    assert (broken.status, (await broken.json())["why"]) == (
        400,
        'Invalid yaml supplied: unknown parameter type: "Fil"',
    )
    state = await (await core_client.get("/_standin/state")).json()
    assert {"run-command@1", "word-count@1", "word-count@2"} <= set(state["applications"])


def test_an_upload_refused_leaves_the_catalogue_as_it_was(core: CoreStandIn) -> None:
    before = dict(core.applications.applications)
    with pytest.raises(ApplicationRefusedError, match="Name must not be empty"):
        core.upload_application(WORD_COUNT_2.replace("name: word-count", 'name: ""'))
    assert core.applications.applications == before


# --- as a process -------------------------------------------------------------


async def test_the_process_entry_point_serves_and_writes_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_path = tmp_path / "ucloud_key.pub"
    args = _parse_args(
        f"--port 0 --provider-id {PROVIDER} --refresh-token {REFRESH_TOKEN} --write-public-key {key_path}".split()
    )
    server = asyncio.create_task(_serve(args))
    try:
        for _ in range(100):
            if "listening on" in (out := capsys.readouterr().out):
                break
            await asyncio.sleep(0.02)
        url = out.split("listening on ")[1].split()[0]
        async with aiohttp.ClientSession() as session:
            response = await session.post(
                f"{url}/auth/providers/refresh", json={"items": [{"refreshToken": REFRESH_TOKEN}]}
            )
            token = (await response.json())["responses"][0]["accessToken"]
        assert decode(token, public_key_from_ucloud_key_pub(key_path.read_text()))["sub"] == "#P_hippo"
    finally:
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server


# --- drives and files ---------------------------------------------------------


def home_item(username: str, provider: str = PROVIDER, product: bool = True) -> dict[str, Any]:
    reference = {"id": "home", "category": "storage", "provider": provider}
    return {
        "spec": {"title": "Home", "product": reference if product else None},
        "providerGeneratedId": f"home:{username}",
        "createdBy": username,
        "project": None,
    }


async def test_drives_are_registered_with_ids_of_cores_own(
    core: CoreStandIn, core_client: TestClient[Any, Any]
) -> None:
    headers = {"Authorization": f"Bearer {await access_token(core_client)}"}
    register = "/api/files/collections/control/register"
    response = await core_client.post(register, json={"items": [home_item("alice"), home_item("bob")]}, headers=headers)
    assert response.status == 200
    ids = [r["id"] for r in (await response.json())["responses"]]
    assert [d.provider_generated_id for d in (core.home_of("alice"), core.home_of("bob"))] == ["home:alice", "home:bob"]
    assert [core.home_of("alice").id, core.home_of("bob").id] == ids
    refusals = [
        await core_client.post(register, json={"items": [home_item("alice")]}, headers=headers),
        await core_client.post(register, json={"items": [home_item("carol", provider="other")]}, headers=headers),
        await core_client.post(register, json={"items": [home_item("carol", product=False)]}, headers=headers),
        await core_client.post(register, json={"items": [home_item("carol")]}),
    ]
    assert [r.status for r in refusals] == [409, 403, 400, 401]
    assert core.drives_of("carol") == []

    browse = "/api/files/collections/control/browse"
    page = await (
        await core_client.get(browse, params={"filterProviderIds": "home:bob,home:x"}, headers=headers)
    ).json()
    assert [d["providerGeneratedId"] for d in page["items"]] == ["home:bob"]
    page = await (await core_client.get(browse, params={"itemsPerPage": "1"}, headers=headers)).json()
    assert len(page["items"]) == 1 and page["next"] == "1"
    page = await (await core_client.get(browse, params={"itemsPerPage": "1", "next": "1"}, headers=headers)).json()
    assert page["items"][0]["providerGeneratedId"] == "home:bob" and page["next"] is None


async def test_a_drive_is_retrieved_by_its_id_as_its_provider_sees_it(
    core: CoreStandIn, core_client: TestClient[Any, Any]
) -> None:
    """``GET /api/files/collections/control/retrieve?id=``, as the real core2 answered it."""
    (drive_id,) = core.drives.register([registered(home_item("alice"))])
    retrieve = "/api/files/collections/control/retrieve"
    headers = {"Authorization": f"Bearer {await access_token(core_client)}"}
    response = await core_client.get(retrieve, params={"id": drive_id, "includeOthers": "false"}, headers=headers)
    assert response.status == 200
    drive = await response.json()
    # fixtures/core2_drive_control_retrieve.json: core2's answer for alice's home there.
    real = json.loads((FIXTURES / "core2_drive_control_retrieve.json").read_text())
    real["specification"]["product"]["provider"] = PROVIDER
    assert json.dumps(drive) == json.dumps(real | {"id": drive_id, "createdAt": drive["createdAt"]})
    # core2 answers an id it does not hold with 403, not 404.
    for unknown in ({"id": "999"}, {"id": "home:alice"}, {}):
        missing = await core_client.get(retrieve, params=unknown, headers=headers)
        assert (missing.status, await missing.json()) == (
            403,
            {"statusCode": 403, "why": "Write permission is required", "errorCode": "", "detailedCode": 0},
        )
    assert (await core_client.get(retrieve, params={"id": drive_id})).status == 401


def registered(item: dict[str, Any]) -> ProviderRegisteredResource[DriveSpecification]:
    return ProviderRegisteredResource[DriveSpecification].model_validate(item)


@dataclass
class FileProvider:
    """A provider that records the file calls and transfers it receives."""

    calls: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.calls.append((request.method, request.path_qs, dict(request.headers), body))
        if request.path.endswith("/files/upload"):
            items = json.loads(body)["items"]
            endpoint = str(request.url.with_path(f"/ucloud/{PROVIDER}/upload").with_query(usernameHint="YWxpY2U"))
            return web.json_response(
                {"responses": [{"endpoint": endpoint, "protocol": "CHUNKED", "token": "tok"} for _ in items]}
            )
        if request.path.endswith("/files/download"):
            return web.json_response({"responses": [{"endpoint": str(request.url.with_path("/dl"))}]})
        if request.path.endswith("/files/browse"):
            return web.json_response({"items": [], "itemsPerPage": 50, "next": None})
        if request.path == "/dl":
            return web.Response(body=b"file content", headers={"Content-Range": request.headers.get("Range", "")})
        return web.json_response({})

    def last_json(self) -> Any:
        return json.loads(self.calls[-1][3])


@pytest.fixture
async def file_provider(core: CoreStandIn, aiohttp_client: AiohttpClient) -> FileProvider:
    fake = FileProvider()
    client = await aiohttp_client(fake.app())
    core.provider_url = str(client.make_url("/"))
    return fake


async def test_file_calls_carry_the_resolved_drive(core: CoreStandIn, file_provider: FileProvider) -> None:
    [home_id] = core.drives.register(
        [ProviderRegisteredResource[DriveSpecification].model_validate(home_item("alice"))]
    )
    home = f"/{home_id}"

    await core.files_browse("alice", f"{home}/docs", items_per_page=10, sort_by="PATH")
    method, path, headers, _ = file_provider.calls[-1]
    body = file_provider.last_json()
    assert (method, path) == ("POST", f"/ucloud/{PROVIDER}/files/browse")
    assert decode_username(headers["UCloud-Username"]) == "alice"
    assert body["Browse"]["flags"]["path"] == f"{home}/docs"
    assert body["Browse"]["itemsPerPage"] == 10 and body["Browse"]["sortBy"] == "PATH"
    drive = body["resolvedCollection"]
    assert (drive["id"], drive["providerGeneratedId"], drive["owner"]["createdBy"]) == (home_id, "home:alice", "alice")
    assert drive["specification"]["product"] == {"id": "home", "category": "storage", "provider": PROVIDER}
    assert {"permissions", "updates", "status"} <= set(drive)

    move = {"oldId": f"{home}/a", "newId": f"{home}/b", "conflictPolicy": "REJECT"}
    assert (await core.files_call("alice", "move", [move])).ok
    item = file_provider.last_json()["items"][0]
    assert item["resolvedOldCollection"]["id"] == item["resolvedNewCollection"]["id"] == home_id

    assert (await core.files_call("alice", "delete", [{"id": f"{home}/a"}])).ok
    method, path, _, _ = file_provider.calls[-1]
    item = file_provider.last_json()["items"][0]
    assert (method, path) == ("DELETE", f"/ucloud/{PROVIDER}/files")
    assert item["id"] == f"{home}/a" and item["specification"]["collection"] == home_id

    assert (await core.files_call("alice", "trash", [{"id": f"{home}/a"}])).ok
    assert file_provider.last_json()["items"][0]["resolvedCollection"]["id"] == home_id
    with pytest.raises(KeyError, match="no drive"):
        await core.files_call("alice", "trash", [{"id": "/999/a"}])


async def test_transfers_are_created_and_played_as_the_browser_does(
    core: CoreStandIn, file_provider: FileProvider
) -> None:
    [home_id] = core.drives.register(
        [ProviderRegisteredResource[DriveSpecification].model_validate(home_item("alice"))]
    )
    upload = await core.create_upload("alice", f"/{home_id}/big.bin", conflict_policy="RENAME")
    item = file_provider.last_json()["items"][0]
    assert (item["id"], item["type"], item["conflictPolicy"]) == (f"/{home_id}/big.bin", "FILE", "RENAME")
    assert item["resolvedCollection"]["id"] == home_id

    answer = await core.upload(upload, b"0123456789", "alice", chunk_size=4)
    assert answer.ok
    chunks = [
        (headers, body)
        for method, path, headers, body in file_provider.calls
        if path.startswith(f"/ucloud/{PROVIDER}/upload")
    ]
    assert [body for _, body in chunks] == [b"0123", b"4567", b"89"]
    assert [h["Chunked-Upload-Offset"] for h, _ in chunks] == ["0", "4", "8"]
    assert {h["Chunked-Upload-Total-Size"] for h, _ in chunks} == {"10"}
    assert {h["Chunked-Upload-Token"] for h, _ in chunks} == {"tok"}
    assert all("Authorization" not in h for h, _ in chunks)

    download = await core.create_download("alice", f"/{home_id}/big.bin")
    fetched = await core.download(download.endpoint, {"Range": "bytes=0-3"})
    assert (fetched.status, fetched.body, fetched.headers["Content-Range"]) == (200, b"file content", "bytes=0-3")


async def test_a_new_time_allocation_becomes_the_jobs_as_core2_keeps_it(
    core: CoreStandIn, core_client: TestClient[Any, Any]
) -> None:
    headers = {"Authorization": f"Bearer {await access_token(core_client)}"}
    core.jobs["43"] = core.make_job("43", "alice", time_allocation=SimpleDuration(minutes=10))
    body = update_body("43", "RUNNING")
    body["items"][0]["update"] |= {"state": None, "newTimeAllocation": 5_430_000}  # 1 h 30 min 30 s
    assert (await core_client.post("/api/jobs/control/update", json=body, headers=headers)).status == 200
    # core2's SimpleDurationFromMillis drops the seconds.
    assert core.jobs["43"].specification.time_allocation == SimpleDuration(hours=1, minutes=30, seconds=0)
    assert core.updates_for("43")[0].new_time_allocation == 5_430_000


async def test_extend_is_refused_by_core_unless_the_product_supports_it(
    core: CoreStandIn, provider: FakeProvider
) -> None:
    job = core.make_job("4213", "alice")
    job.specification.product.id, job.specification.product.category = "u1-2", "u1"
    async with core:
        with pytest.raises(ProviderCallError) as refused:
            await core.extend_jobs([(job, SimpleDuration(hours=1))])
    assert refused.value.status == 400
    assert refused.value.body["why"] == "time extension is not supported by this provider"
