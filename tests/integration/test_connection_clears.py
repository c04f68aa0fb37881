"""The operator's connection clearer on the real apiserver: its watch, its timer, its record, its restart."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from tests.support.platform import Platform
from ucim.common import reasons
from ucim.common.core_client import CoreClient
from ucim.common.kube import Kube
from ucim.common.resources import UserConnection
from ucim.common.times import now_utc
from ucim.gateway.connections import Connections
from ucim.operator.connections import ConnectionClearer
from ucim.testing.core_standin import CoreStandIn

pytestmark = pytest.mark.integration

REFRESH_TOKEN = "refresh-clears"
USER = "carol#5"
WAIT = 10.0


@pytest.fixture
async def core() -> AsyncIterator[CoreStandIn]:
    async with CoreStandIn("ucim", REFRESH_TOKEN) as standin:
        await standin.start()
        yield standin


@contextlib.asynccontextmanager
async def clearer_running(core: CoreStandIn, kube: Kube, namespace: str) -> AsyncIterator[None]:
    """The operator's clearer, with its own Core client, until the block ends (as an operator's life)."""
    client = CoreClient(core.url, SecretStr(REFRESH_TOKEN))
    task = asyncio.create_task(ConnectionClearer(client, kube, namespace=namespace, cluster="local").run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()


async def test_an_expiry_is_cleared_once_recorded_and_not_again_after_a_restart(
    platform: Platform, core: CoreStandIn, namespace: str
) -> None:
    async with (
        await Kube.connect(platform.kubeconfig, component="gateway") as gateway_kube,
        await Kube.connect(platform.kubeconfig, component="operator") as kube,
    ):
        # The gateway connects the user for 2 s (expiresAt is written in whole seconds: 1 to 2 s).
        gateway = Connections(gateway_kube, namespace, "local", expire_after_ms=2000)
        made = await gateway.mark_connected(
            await gateway.ensure(USER, now_utc()), reasons.CONNECTION_APPROVED, now_utc()
        )
        expires = made.spec.expires_at
        assert expires is not None
        async with clearer_running(core, kube, namespace):
            await asyncio.sleep(0.5)
            assert core.record.cleared_connections == []  # the watch armed a timer; it has not fired
            await core.record.wait_for_cleared(USER, WAIT)
            recorded = await asyncio.wait_for(
                kube.wait_for(
                    UserConnection,
                    namespace,
                    made.metadata.name,
                    lambda c: c is not None and c.status.cleared is not None,
                ),
                WAIT,
            )
        assert recorded is not None and recorded.status.cleared is not None
        assert (recorded.status.cleared.expires_at, recorded.status.cleared.reason) == (expires, reasons.EXPIRED)

        # A restarted operator lists the connection, recorded: nothing is sent again.
        async with clearer_running(core, kube, namespace):
            await asyncio.sleep(1.0)
        assert core.record.cleared_connections == [USER]

        # Unlinked while no operator runs: the next one clears it as soon as it has listed.
        await gateway.mark_connected(recorded, reasons.CONNECTION_APPROVED, now_utc())
        fresh = await kube.get(UserConnection, namespace, made.metadata.name)
        assert fresh is not None
        await gateway.mark_unlinked(fresh, now_utc())
        async with clearer_running(core, kube, namespace):
            unlinked = await asyncio.wait_for(
                kube.wait_for(
                    UserConnection,
                    namespace,
                    made.metadata.name,
                    lambda c: c is not None and c.status.cleared is not None and c.status.cleared.reason == "Unlinked",
                ),
                WAIT,
            )
        assert unlinked is not None
        assert core.record.cleared_connections == [USER, USER]
