"""Every component starts from its settings and serves /healthz and /metrics."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import SecretStr
from pytest_aiohttp import AiohttpClient

from tests.support.fake_kube import FakeKube
from ucim.common.kube import Kube
from ucim.common.observability import health_app
from ucim.gateway.app import init_app
from ucim.gateway.settings import GatewaySettings
from ucim.testing.core_standin import CoreKeys

REPO = Path(__file__).resolve().parents[2]


async def test_gateway_serves_health_and_metrics(aiohttp_client: AiohttpClient) -> None:
    settings = GatewaySettings(core_public_key=SecretStr(CoreKeys.generate().public_key_b64()))
    client = await aiohttp_client(init_app(settings, kube=typing.cast(Kube, FakeKube())))
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    metrics = await (await client.get("/metrics")).text()
    assert "python_info" in metrics


async def test_readiness_follows_its_check(aiohttp_client: AiohttpClient) -> None:
    async def not_ready() -> bool:
        return False

    client = await aiohttp_client(health_app(not_ready))
    assert (await client.get("/readyz")).status == 503


def test_settings_come_from_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UCIM_GATEWAY_PORT", "18889")
    monkeypatch.setenv("UCIM_GATEWAY_PROVIDER_ID", "hippo")
    settings = GatewaySettings()
    assert (settings.port, settings.provider_id) == (18889, "hippo")


def test_operator_folder_does_not_shadow_the_standard_library() -> None:
    # Run from the repository root, where `operator/` sits first on sys.path.
    out = subprocess.run(
        [sys.executable, "-c", "import operator, ucim.operator.settings; print(operator.__file__)"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "site-packages" not in out
    assert not out.strip().startswith(str(REPO))


@pytest.mark.parametrize(
    "module", ["ucim.gateway.main", "ucim.operator.main", "ucim.slurm_bridge.main", "ucim.user_sidecar.main"]
)
def test_entry_points_import(module: str) -> None:
    __import__(module)
