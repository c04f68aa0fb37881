"""Fixtures shared by the gateway's unit tests: Core's stand-in, a fake Kubernetes, and a gateway
in front of a fake bridge ingress (``env``), built through the real application factory; and the
event loops the tests run on."""

from __future__ import annotations

import asyncio
import typing
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer

from tests.support.fake_ingress import FakeIngress
from tests.support.fake_kube import FakeKube
from tests.support.gateway_files import PROVIDER, Env, GatewayFactory, settings
from ucim.common.event_loops import new_relay_loop
from ucim.common.kube import Kube
from ucim.gateway.app import init_app
from ucim.testing import CoreStandIn


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Tests marked ``relay_loops`` run on asyncio's loop (the instances') and on the relays' (uvloop)."""
    if item.get_closest_marker("relay_loops") is not None:
        return {"asyncio": asyncio.new_event_loop, "uvloop": new_relay_loop}
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture
def core() -> CoreStandIn:
    return CoreStandIn(PROVIDER, "refresh-token")


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def ingress() -> FakeIngress:
    return FakeIngress()


@pytest.fixture
async def ingress_server(ingress: FakeIngress, aiohttp_server: AiohttpServer) -> TestServer:
    return await aiohttp_server(ingress.app())


@pytest.fixture
def make_gateway(core: CoreStandIn, kube: FakeKube, aiohttp_client: AiohttpClient) -> GatewayFactory:
    """A gateway with ``settings(core, **options)``; a stopped instance is waited for 2 s, not 15."""

    async def make(**options: Any) -> TestClient[Any, Any]:
        options.setdefault("transfer_wait_seconds", 2.0)
        return await aiohttp_client(init_app(settings(core, **options), kube=typing.cast(Kube, kube)))

    return make


@pytest.fixture
async def env(
    core: CoreStandIn, kube: FakeKube, ingress: FakeIngress, ingress_server: TestServer, make_gateway: GatewayFactory
) -> Env:
    return Env(core, kube, ingress, ingress_server, await make_gateway())
