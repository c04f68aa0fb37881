"""Products are registered with Core at start-up, retrying while Core is down."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from ucim.common.core_client import PRODUCTS_PATH, CoreClient
from ucim.common.products import DEFAULT_MACHINE_TYPES
from ucim.common.protocol import dump
from ucim.operator.registration import products_of, register_products
from ucim.operator.settings import OperatorSettings
from ucim.testing import CoreStandIn

PROVIDER = "hippo"
REFRESH_TOKEN = "refresh-0123456789"


async def no_sleep(_: float) -> None:
    return None


@pytest.fixture
async def core() -> AsyncIterator[CoreStandIn]:
    async with CoreStandIn(PROVIDER, REFRESH_TOKEN) as standin:
        await standin.start()
        yield standin


async def test_products_are_registered_once_core_answers(core: CoreStandIn) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            core.clear_failures()

    core.fail_requests(PRODUCTS_PATH, status=503)
    products = products_of(DEFAULT_MACHINE_TYPES, PROVIDER)
    async with CoreClient(core.url, SecretStr(REFRESH_TOKEN), attempts=1, sleep=no_sleep) as client:
        assert await register_products(client, products, sleep=sleep)
    assert len(waits) == 3
    assert [(p.name, p.category.provider) for p in core.record.products] == [
        *((m.name, PROVIDER) for m in DEFAULT_MACHINE_TYPES),
        ("home", PROVIDER),
        ("project", PROVIDER),
    ]


async def test_a_refusal_is_not_retried(core: CoreStandIn) -> None:
    core.fail_requests(PRODUCTS_PATH, status=400)
    async with CoreClient(core.url, SecretStr(REFRESH_TOKEN), sleep=no_sleep) as client:
        assert not await register_products(client, products_of(DEFAULT_MACHINE_TYPES, PROVIDER), sleep=no_sleep)
    assert core.record.requests[PRODUCTS_PATH] == 1


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UCIM_OPERATOR_PROVIDER_ID", "hippo")
    monkeypatch.setenv("UCIM_OPERATOR_CORE_REFRESH_TOKEN", "s3cret")
    machine = '{"name": "gpu-1", "category": "gpu", "partition": "gpu", "cpu": 8, "memory_gigabytes": 64, "gpu": 1}'
    monkeypatch.setenv("UCIM_OPERATOR_MACHINE_TYPES", f"[{machine}]")
    settings = OperatorSettings()
    assert settings.provider_id == "hippo"
    assert settings.core_refresh_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)
    assert [m.name for m in settings.machine_types] == ["gpu-1"]
    assert OperatorSettings.model_fields["delivery_batch_size"].default == 100


def test_categories_are_shaped_as_im2_registers_them() -> None:
    """The category JSON core2 stores (and sends back on the event stream): compute allows sub-allocations as IM2's
    does (core2 keeps an omitted flag as false), storage is free to use in GB."""
    compute, *_, storage = (dump(p)["category"] for p in products_of(DEFAULT_MACHINE_TYPES, PROVIDER))
    assert compute == {
        "name": "cpu",
        "provider": PROVIDER,
        "productType": "COMPUTE",
        "accountingUnit": {
            "name": "Core",
            "namePlural": "Cores",
            "floatingPoint": False,
            "displayFrequencySuffix": True,
        },
        "accountingFrequency": "PERIODIC_HOUR",
        "allowSubAllocations": True,
    }
    assert storage == {
        "name": "storage",
        "provider": PROVIDER,
        "productType": "STORAGE",
        "accountingUnit": {"name": "GB", "namePlural": "GB", "floatingPoint": False, "displayFrequencySuffix": False},
        "accountingFrequency": "ONCE",
        "freeToUse": True,
    }
