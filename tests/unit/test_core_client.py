"""The provider's Core client against the Core stand-in, in process."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import jwt
import pytest
from pydantic import SecretStr

from ucim.common import core_client
from ucim.common.core_client import (
    DRIVE_BROWSE_PATH,
    JOB_UPDATE_PATH,
    PRODUCTS_PATH,
    REFRESH_PATH,
    CoreClient,
    CoreRejectedError,
    CoreUnavailableError,
    batched,
    needs_renewal,
    token_expiry,
)
from ucim.common.products import DEFAULT_MACHINE_TYPES
from ucim.common.protocol import (
    DriveSpecification,
    JobState,
    JobUpdate,
    JobUpdateItem,
    ProductReference,
    ProviderRegisteredResource,
)
from ucim.testing import CoreKeys, CoreStandIn

PROVIDER = "hippo"
REFRESH_TOKEN = "refresh-0123456789"


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def no_sleep(_: float) -> None:
    return None


@pytest.fixture
async def core() -> AsyncIterator[CoreStandIn]:
    async with CoreStandIn(PROVIDER, REFRESH_TOKEN) as standin:
        await standin.start()
        yield standin


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def client(core: CoreStandIn, clock: FakeClock) -> AsyncIterator[CoreClient]:
    async with CoreClient(core.url, SecretStr(REFRESH_TOKEN), clock=clock, sleep=no_sleep) as core_client:
        yield core_client


def update(job_id: str, n: int) -> JobUpdateItem:
    return JobUpdateItem(id=job_id, update=JobUpdate(state=JobState.RUNNING, status=f"#{n}", timestamp=n))


async def test_updates_go_out_in_order_in_requests_of_at_most_100(client: CoreClient, core: CoreStandIn) -> None:
    items = [update("42", n) for n in range(250)]
    await client.push_job_updates(items)
    assert [u.status for u in core.updates_for("42")] == [f"#{n}" for n in range(250)]
    assert core.record.requests[JOB_UPDATE_PATH] == 3


async def test_no_request_for_no_updates(client: CoreClient, core: CoreStandIn) -> None:
    await client.push_job_updates([])
    assert core.record.requests[JOB_UPDATE_PATH] == 0


async def test_access_token_is_cached(client: CoreClient, core: CoreStandIn) -> None:
    await client.push_job_updates([update("1", 1)])
    await client.push_job_updates([update("1", 2)])
    assert core.record.refresh_count == 1


async def test_access_token_is_renewed_when_less_than_three_minutes_are_left(
    client: CoreClient, core: CoreStandIn, clock: FakeClock
) -> None:
    await client.push_job_updates([update("1", 1)])
    clock.now += 600 - 200  # 200 s left: still fine
    await client.push_job_updates([update("1", 2)])
    assert core.record.refresh_count == 1
    clock.now += 30  # 170 s left: renew before it runs out
    await client.push_job_updates([update("1", 3)])
    assert core.record.refresh_count == 2


async def test_a_refused_token_is_replaced_once(client: CoreClient, core: CoreStandIn) -> None:
    await client.push_job_updates([update("1", 1)])
    core.keys = CoreKeys.generate()  # Core restarted with new keys: the cached token is now refused (401)
    await client.push_job_updates([update("1", 2)])
    assert core.record.refresh_count == 2
    assert [u.status for u in core.updates_for("1")] == ["#1", "#2"]


async def test_server_errors_are_retried(client: CoreClient, core: CoreStandIn) -> None:
    core.fail_requests(JOB_UPDATE_PATH, times=2, status=503)
    await client.push_job_updates([update("1", 1)])
    assert core.record.requests[JOB_UPDATE_PATH] == 3
    assert len(core.updates_for("1")) == 1


async def test_unreachable_core_raises_after_the_attempts(client: CoreClient, core: CoreStandIn) -> None:
    await client.access_token()
    await core.go_offline()
    with pytest.raises(CoreUnavailableError):
        await client.push_job_updates([update("1", 1)])
    await core.go_online()
    await client.push_job_updates([update("1", 1)])
    assert len(core.updates_for("1")) == 1


async def test_client_errors_are_not_retried_and_carry_why(client: CoreClient, core: CoreStandIn) -> None:
    core.fail_requests(JOB_UPDATE_PATH, times=1, status=400)
    with pytest.raises(CoreRejectedError) as raised:
        await client.push_job_updates([update("1", 1)])
    assert (raised.value.status, raised.value.why) == (400, "Injected failure")
    assert core.record.requests[JOB_UPDATE_PATH] == 1


async def test_a_wrong_refresh_token_is_rejected(core: CoreStandIn) -> None:
    async with CoreClient(core.url, SecretStr("wrong"), sleep=no_sleep) as client:
        with pytest.raises(CoreRejectedError) as raised:
            await client.push_job_updates([update("1", 1)])
    assert raised.value.status == 401
    assert core.record.requests[REFRESH_PATH] == 1
    assert core.record.requests[JOB_UPDATE_PATH] == 0


async def test_products_are_registered(client: CoreClient, core: CoreStandIn) -> None:
    products = [machine.product(PROVIDER) for machine in DEFAULT_MACHINE_TYPES]
    await client.register_products(products)
    assert [p.name for p in core.record.products] == [m.name for m in DEFAULT_MACHINE_TYPES]
    assert core.record.requests[PRODUCTS_PATH] == 1


def test_token_expiry_is_read_without_verifying() -> None:
    key = "a key that is not Core's, 32 bytes or more"
    assert token_expiry(jwt.encode({"exp": 1_900_000_000}, key, algorithm="HS256")) == 1_900_000_000
    assert token_expiry("not a token") is None
    assert token_expiry(jwt.encode({"sub": "x"}, key, algorithm="HS256")) is None


def test_renewal_threshold_is_three_minutes() -> None:
    assert not needs_renewal(1000.0, now=1000.0 - 181)
    assert needs_renewal(1000.0, now=1000.0 - 179)
    assert needs_renewal(None, now=0.0)


def test_batched_keeps_order() -> None:
    assert list(batched([1, 2, 3, 4, 5], 2)) == [[1, 2], [3, 4], [5]]
    assert list(batched([], 100)) == []
    with pytest.raises(ValueError, match="positive"):
        list(batched([1], 0))


async def test_job_updates_are_read_back_from_core(client: CoreClient, core: CoreStandIn) -> None:
    core.jobs["1"] = core.make_job("1", "alice")
    await client.push_job_updates([update("1", 1), update("1", 2)])
    held = await client.job_updates("1")
    assert [u.status for u in held] == ["#1", "#2"]
    with pytest.raises(CoreRejectedError) as raised:
        await client.job_updates("unknown")
    assert raised.value.status == 404


def drive_item(locator: str, provider: str = PROVIDER) -> ProviderRegisteredResource[DriveSpecification]:
    product = ProductReference(id="home", category="storage", provider=provider)
    return ProviderRegisteredResource[DriveSpecification](
        spec=DriveSpecification(title="Home", product=product),
        provider_generated_id=locator,
        created_by=locator.partition(":")[2],
    )


async def test_drives_are_registered_and_found_again(client: CoreClient, core: CoreStandIn) -> None:
    ids = await client.register_drives([drive_item("home:alice"), drive_item("home:bob")])
    assert len(ids) == 2 and len(set(ids)) == 2
    assert core.home_of("alice").id == ids[0]
    with pytest.raises(CoreRejectedError) as raised:
        await client.register_drives([drive_item("home:alice")])
    assert raised.value.status == 409
    with pytest.raises(CoreRejectedError) as raised:
        await client.register_drives([drive_item("home:carol", provider="another")])
    assert raised.value.status == 403
    found = await client.browse_drives(["home:bob", "home:nobody"])
    assert [(d.id, d.provider_generated_id) for d in found] == [(ids[1], "home:bob")]


async def test_browsing_drives_follows_every_page(
    client: CoreClient, core: CoreStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core_client, "BROWSE_PAGE_SIZE", 2)
    locators = [f"project:g{i}" for i in range(5)]
    await client.register_drives([drive_item(locator) for locator in locators])
    found = await client.browse_drives(locators)
    assert sorted(d.provider_generated_id for d in found) == locators
    assert core.record.requests[DRIVE_BROWSE_PATH] == 3
