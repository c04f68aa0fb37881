"""Two writers of one object, interleaved on the real apiserver: nothing either wrote is lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from tests.support.platform import Platform
from ucim.common import reasons
from ucim.common.conditions import find_condition
from ucim.common.kube import Kube
from ucim.common.ownership import OwnershipError
from ucim.common.resources import UserConnection, UserInstance
from ucim.common.times import now_utc
from ucim.common.user_instances import ensure_user_instance
from ucim.gateway.connections import Connections
from ucim.slurm_bridge.connections import ConnectionMapper
from ucim.slurm_bridge.mapping import Mapper, MappingSettings

pytestmark = pytest.mark.integration


@pytest.fixture
async def kubes(platform: Platform) -> AsyncIterator[dict[str, Kube]]:
    """One client per component, each named, as each component's own is."""
    clients = {c: await Kube.connect(platform.kubeconfig, component=c) for c in ("gateway", "bridge", "operator")}
    yield clients
    for client in clients.values():
        await client.close()


async def test_connected_and_mapped_are_each_their_writers_own(kubes: dict[str, Kube], namespace: str) -> None:
    gateway = Connections(kubes["gateway"], namespace, "local")
    bridge = ConnectionMapper(
        kube=kubes["bridge"], namespace=namespace, cluster="local", mapper=Mapper(MappingSettings())
    )
    created = await gateway.ensure("alice#7", now_utc())
    # Both write from the same copy, which holds neither condition: each applies only its own.
    await asyncio.gather(
        gateway.mark_connected(created, reasons.AUTO_CONNECTED, now_utc()),
        bridge.map(created),
    )
    stored = await kubes["gateway"].get(UserConnection, namespace, created.metadata.name)
    assert stored is not None
    assert {c.type: c.status for c in stored.status.conditions} == {reasons.CONNECTED: "True", reasons.MAPPED: "True"}
    assert stored.spec.local_user == "alice"
    # Again, the other way round and from stale copies: still both.
    await asyncio.gather(bridge.map(created), gateway.mark_unlinked(created, now_utc() + timedelta(seconds=1)))
    stored = await kubes["gateway"].get(UserConnection, namespace, created.metadata.name)
    assert stored is not None
    connected = find_condition(stored.status.conditions, reasons.CONNECTED)
    assert connected is not None and connected.status == "False"
    assert find_condition(stored.status.conditions, reasons.MAPPED) is not None
    # And neither may write the other's condition.
    with pytest.raises(OwnershipError):
        await kubes["gateway"].apply_status(
            UserConnection, namespace, created.metadata.name,
            {"conditions": [{"type": reasons.MAPPED, "status": "False", "reason": "X", "message": "",
                             "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
            field_manager="ucim-gateway",
        )  # fmt: skip


async def test_the_gateway_and_the_operator_create_one_and_the_same_instance(
    kubes: dict[str, Kube], namespace: str
) -> None:
    now = now_utc()
    made = await asyncio.gather(*(
        ensure_user_instance(kubes[c], namespace, "bob#3", "local", idle_timeout_seconds=600, now=now,
                             retry_refused=c == "gateway")
        for c in ("gateway", "operator", "gateway", "operator")
    ))  # fmt: skip
    assert len({m.metadata.uid for m in made}) == 1
    stored = await kubes["operator"].get(UserInstance, namespace, UserInstance.name_for("bob#3", "local"))
    assert stored is not None
    assert stored.spec.idle_timeout_seconds == 600
    assert stored.metadata.labels == {"ucim.io/cluster": "local"}
    assert (stored.metadata.annotations or {})[reasons.REQUESTED_AT_ANNOTATION].endswith("Z")
