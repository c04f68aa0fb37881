"""Helpers of the gateway's file and transfer unit tests: settings, Core's headers, an instance at the fake ingress."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY
from pydantic import SecretStr

from tests.support.fake_ingress import TOKEN, FakeIngress
from tests.support.fake_kube import FakeKube
from ucim.common.protocol import encode_username
from ucim.common.resources import UserInstance
from ucim.gateway.settings import GatewaySettings
from ucim.testing import CoreStandIn

PROVIDER = "ucim"
NAMESPACE = "ucim"
PUBLIC_URL = "https://gateway.example:8443"
BASE = f"/ucloud/{PROVIDER}"
READY = {"type": "Ready", "status": "True", "reason": "InstanceServing", "message": "",
         "lastTransitionTime": "2026-01-01T00:00:00Z"}  # fmt: skip


# make_gateway(**options): a gateway client with settings(core, **options).
GatewayFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


def settings(core: CoreStandIn, **options: Any) -> GatewaySettings:
    defaults: dict[str, Any] = {"ingress_token": SecretStr(TOKEN), "public_url": PUBLIC_URL}
    return GatewaySettings(
        core_public_key=SecretStr(core.keys.public_key_b64()),
        provider_id=PROVIDER,
        namespace=NAMESPACE,
        **(defaults | options),
    )


def headers(core: CoreStandIn, username: str | None = "alice") -> dict[str, str]:
    """Core's headers: a fresh service JWT and, for a user's call, UCloud-Username."""
    result = {"Authorization": f"Bearer {core.mint_service_token()}"}
    if username is not None:
        result["UCloud-Username"] = encode_username(username)
    return result


async def serve(
    kube: FakeKube, ingress: FakeIngress, server: TestServer, username: str = "alice", *, ready: bool = True
) -> str:
    """The user's instance exists, Ready and running at the fake ingress (or stopped); its name."""
    name = UserInstance.name_for(username, "local")
    if await kube.get(UserInstance, NAMESPACE, name) is None:
        manifest = {"metadata": {"name": name}, "spec": {"ucloudUsername": username, "cluster": "local"}}
        await kube.create(UserInstance.from_obj(manifest), NAMESPACE)
    status: dict[str, Any] = {"endpoint": str(server.make_url(f"/instances/{name}"))}
    status["conditions"] = [READY] if ready else [{**READY, "status": "False", "reason": "IdleStopped"}]
    await kube.patch_status(UserInstance, NAMESPACE, name, status)
    if ready:
        ingress.running.add(name)
    else:
        await ingress.stop(name)
    return name


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@dataclass
class Env:
    """A gateway, the Core that calls it, and the fake ingress with the users' instances behind it."""

    core: CoreStandIn
    kube: FakeKube
    ingress: FakeIngress
    server: TestServer
    gateway: TestClient[Any, Any]

    async def serve(self, username: str = "alice", *, ready: bool = True) -> str:
        return await serve(self.kube, self.ingress, self.server, username, ready=ready)

    def headers(self, username: str | None = "alice") -> dict[str, str]:
        return headers(self.core, username)
