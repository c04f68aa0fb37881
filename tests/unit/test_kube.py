"""ucim.common.kube: calls and watches end when the apiserver's connection goes silent, or fail when it is down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from kubernetes_asyncio import client
from pytest_aiohttp import AiohttpServer

from ucim.common.kube import GoneError, Kube, UnavailableError, _watch_event
from ucim.common.resources import UCloudJob, UserInstance

PLURAL_PATH = f"/apis/{UCloudJob.GROUP}/{UCloudJob.VERSION}/namespaces/ns/{UCloudJob.PLURAL}"


async def silent(request: web.Request) -> web.StreamResponse:
    """Answers the headers (a watch's, or any call's), then nothing: a connection that died quietly."""
    response = web.StreamResponse()
    await response.prepare(request)
    await asyncio.sleep(3600)
    return response


async def starting(request: web.Request) -> web.StreamResponse:
    """What a kube-apiserver that is starting answers (seen in the apiserver drill)."""
    message = "the request has been made before all known HTTP paths have been installed, please try again"
    body = {"kind": "Status", "status": "Failure", "message": message, "reason": "ServiceUnavailable", "code": 503}
    return web.json_response(body, status=503, headers={"Retry-After": "5"})


@pytest.fixture
async def kube(aiohttp_server: AiohttpServer) -> AsyncIterator[Kube]:
    app = web.Application()
    app.router.add_get(PLURAL_PATH, silent)
    app.router.add_get(PLURAL_PATH + "/starting", starting)
    app.router.add_get(PLURAL_PATH + "/{name}", silent)
    server = await aiohttp_server(app)
    configuration = client.Configuration(host=str(server.make_url("")).rstrip("/"))
    async with Kube(client.ApiClient(configuration), request_timeout=0.3, watch_grace=0.3) as kube:
        yield kube


async def test_a_call_the_apiserver_never_answers_times_out(kube: Kube) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await kube.get(UCloudJob, "ns", "job")
    assert time.monotonic() - started < 5


async def test_a_silent_watch_times_out_after_its_end_and_the_grace(kube: Kube) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async for _ in kube.watch(UCloudJob, "ns", timeout_seconds=1):
            pass
    assert 1.2 <= time.monotonic() - started < 6  # not before the end it asked the apiserver for


def test_watch_lines_become_typed_events_and_a_410_is_gone() -> None:
    obj = {"metadata": {"name": "i", "resourceVersion": "12"}, "spec": {"ucloudUsername": "a", "cluster": "c"}}
    added = _watch_event(UserInstance, {"type": "ADDED", "object": obj})
    assert (added.type, added.resource_version) == ("ADDED", "12")
    assert added.obj is not None and added.obj.metadata.name == "i"
    bookmark = _watch_event(UserInstance, {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "40"}}})
    assert (bookmark.type, bookmark.obj, bookmark.resource_version) == ("BOOKMARK", None, "40")
    gone = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version: 1 (40)"}
    with pytest.raises(GoneError, match="too old"):
        _watch_event(UserInstance, {"type": "ERROR", "object": gone})


async def test_an_apiserver_that_is_down_is_unavailable_for_calls_and_watches() -> None:
    configuration = client.Configuration(host="http://127.0.0.1:9")  # nothing listens there
    async with Kube(client.ApiClient(configuration)) as kube:
        with pytest.raises(UnavailableError, match="cannot be reached"):
            await kube.get(UCloudJob, "ns", "job")
        with pytest.raises(UnavailableError):
            await kube.list(UCloudJob, "ns")
        with pytest.raises(UnavailableError):
            async for _ in kube.watch(UCloudJob, "ns", timeout_seconds=1):
                pass


async def test_an_apiserver_that_cannot_serve_yet_is_unavailable(kube: Kube) -> None:
    with pytest.raises(UnavailableError, match="before all known HTTP paths"):
        await kube.get(UCloudJob, "ns", "starting")
