"""The operator's side of user instances: the HTTP client and Ready flips (creating them: test_user_instances)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from ucim.common.instance_api import CANCEL_PATH, SUBMIT_PATH, SubmitRequest
from ucim.common.protocol import error_body
from ucim.common.reasons import MAPPED, READY
from ucim.common.resources import JobApplication, JobResources, ProductRef
from ucim.common.times import rfc3339
from ucim.operator import userinstances
from ucim.operator.instances import InstanceClient, InstanceRejectedError, InstanceUnreachableError

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
TOKEN = "ingress-token-123"
REQUEST = SubmitRequest(
    job_id="1",
    slurm_job_name="ucim-uid",
    application=JobApplication(name="run-command", version="1"),
    product=ProductRef(id="cpu-1", category="cpu"),
    resources=JobResources(nodes=1, cpus_per_node=1, memory_megabytes_per_node=100),
)


# --- the HTTP client ---


class FakeIngress:
    def __init__(self) -> None:
        self.answer: tuple[int, Any] = (200, {"slurmJobId": 5, "jobFolder": "/f", "alreadySubmitted": False})
        self.seen: list[tuple[str, str, Any]] = []

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            self.seen.append((request.path, request.headers.get("Authorization", ""), await request.json()))
            status, body = self.answer
            if isinstance(body, str):
                return web.Response(status=status, text=body)
            return web.json_response(body, status=status)

        app = web.Application()
        app.router.add_post("/i/alice" + SUBMIT_PATH, handle)
        app.router.add_post("/i/alice" + CANCEL_PATH, handle)
        return app


@pytest.fixture
def ingress() -> FakeIngress:
    return FakeIngress()


@pytest.fixture
async def endpoint(ingress: FakeIngress) -> AsyncIterator[str]:
    server = TestServer(ingress.app())
    await server.start_server()
    yield str(server.make_url("/i/alice"))
    await server.close()


@pytest.fixture
async def client() -> AsyncIterator[InstanceClient]:
    async with InstanceClient(SecretStr(TOKEN), timeout=5) as instance_client:
        yield instance_client


async def test_submit_posts_the_request_with_the_ingress_token(
    client: InstanceClient, ingress: FakeIngress, endpoint: str
) -> None:
    answer = await client.submit(endpoint, REQUEST)
    assert (answer.slurm_job_id, answer.job_folder, answer.already_submitted) == (5, "/f", False)
    path, authorization, body = ingress.seen[0]
    assert path == "/i/alice/jobs/submit"
    assert authorization == f"Bearer {TOKEN}"
    assert body["slurmJobName"] == "ucim-uid"


async def test_cancel_posts_the_ids(client: InstanceClient, ingress: FakeIngress, endpoint: str) -> None:
    ingress.answer = (200, {})
    await client.cancel(endpoint, [5, 6])
    assert ingress.seen[0][0] == "/i/alice/jobs/cancel"
    assert ingress.seen[0][2] == {"slurmJobIds": [5, 6]}


async def test_a_4xx_with_why_is_a_rejection(client: InstanceClient, ingress: FakeIngress, endpoint: str) -> None:
    ingress.answer = (400, error_body(400, "sbatch: error: invalid partition specified: nope"))
    with pytest.raises(InstanceRejectedError) as raised:
        await client.submit(endpoint, REQUEST)
    assert raised.value.why == "Sbatch: error: invalid partition specified: nope"


@pytest.mark.parametrize("status", [500, 502, 503, 449, 429, 404, 401])
async def test_server_errors_and_not_now_answers_mean_unreachable(
    client: InstanceClient, ingress: FakeIngress, endpoint: str, status: int
) -> None:
    ingress.answer = (status, "try later")
    with pytest.raises(InstanceUnreachableError, match="try later"):
        await client.submit(endpoint, REQUEST)


async def test_a_malformed_success_is_not_trusted(client: InstanceClient, ingress: FakeIngress, endpoint: str) -> None:
    ingress.answer = (200, {"hello": "world"})
    with pytest.raises(InstanceUnreachableError):
        await client.submit(endpoint, REQUEST)


async def test_connection_refused_means_unreachable(client: InstanceClient) -> None:
    with pytest.raises(InstanceUnreachableError):
        await client.submit("http://127.0.0.1:9/i/alice", REQUEST)


# --- Ready flips ---


def condition(type_: str, status: str, changed: datetime = T0, reason: str = "Because") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": "m", "lastTransitionTime": rfc3339(changed)}


def test_ready_flips_are_detected() -> None:
    unknown = [condition(READY, "Unknown")]
    ready = [condition(READY, "True", reason="InstanceServing")]
    also_mapped = [*ready, condition(MAPPED, "True")]
    flip = userinstances.ready_flip(unknown, ready)
    assert flip is not None
    assert (flip.status, flip.reason) == ("True", "InstanceServing")
    assert userinstances.ready_flip(None, ready) is not None
    assert userinstances.ready_flip(ready, also_mapped) is None
    assert userinstances.ready_flip(ready, None) is None
