"""The bridge maps UserConnections: once, adopting an instance's earlier mapping, and says why it refuses."""

from __future__ import annotations

import asyncio
import typing
from datetime import UTC, datetime, timedelta

import pytest

from tests.support.fake_kube import FakeKube
from ucim.common import reasons
from ucim.common.conditions import find_condition
from ucim.common.kube import Kube
from ucim.common.resources import ObjectMeta, UserConnection, UserConnectionSpec, UserInstance, UserInstanceSpec
from ucim.common.user_instances import requested_at
from ucim.slurm_bridge.connections import ConnectionMapper
from ucim.slurm_bridge.mapping import LocalAccount, Mapper, MappingRefusedError, MappingSettings

NS = "ns"
ALICE = LocalAccount(name="alice", uid=1101, gid=1101, groups=(1101,), home="/home/alice", login_shell="/bin/bash")
OLD = LocalAccount(name="alice2", uid=1555, gid=1555, groups=(1555,), home="/home/alice2", login_shell="/bin/bash")


class FakeMapper(Mapper):
    def __init__(self) -> None:
        super().__init__(MappingSettings())
        self.refuse: str | None = None
        self.calls = 0

    async def map(self, ucloud_username: str) -> LocalAccount:
        self.calls += 1
        if self.refuse:
            raise MappingRefusedError(self.refuse)
        return ALICE

    def resolve(self, uid: int, local_user: str | None) -> LocalAccount:
        return {ALICE.uid: ALICE, OLD.uid: OLD}[uid]


async def world() -> tuple[ConnectionMapper, FakeKube, FakeMapper]:
    kube, mapper = FakeKube(), FakeMapper()
    await kube.create(connection("alice#1"), NS)
    return ConnectionMapper(kube=typing.cast(Kube, kube), namespace=NS, cluster="local", mapper=mapper), kube, mapper


def connection(username: str) -> UserConnection:
    return UserConnection(
        metadata=ObjectMeta(name=UserConnection.name_for(username, "local")),
        spec=UserConnectionSpec(ucloud_username=username, cluster="local"),
    )


async def current(kube: FakeKube, username: str = "alice#1") -> UserConnection:
    found = await kube.get(UserConnection, NS, UserConnection.name_for(username, "local"))
    assert found is not None
    return found


async def test_a_connection_is_mapped_once() -> None:
    connections, kube, mapper = await world()
    await connections.map(await current(kube))
    mapped = await current(kube)
    assert (mapped.spec.local_user, mapped.spec.uid) == ("alice", 1101)
    condition = find_condition(mapped.status.conditions, reasons.MAPPED)
    assert condition is not None and condition.status == "True"
    assert not connections.needs_mapping(mapped)
    # The instance path takes the connection's account and does not map again.
    assert await connections.account_for("alice#1") == ALICE
    assert mapper.calls == 1


async def test_an_instance_mapped_before_the_connection_keeps_its_uid() -> None:
    connections, kube, mapper = await world()
    instance = UserInstance(
        metadata=ObjectMeta(name=UserInstance.name_for("alice#1", "local")),
        spec=UserInstanceSpec(ucloud_username="alice#1", cluster="local", local_user="alice2", uid=1555),
    )
    await kube.create(instance, NS)
    await connections.map(await current(kube))
    assert (await current(kube)).spec.uid == 1555
    assert mapper.calls == 0


async def test_a_refusal_is_recorded_with_the_reason_and_retried_only_when_asked_again() -> None:
    connections, kube, mapper = await world()
    mapper.refuse = "there is no local user 'alice'"
    await connections.map(await current(kube))
    refused = await current(kube)
    condition = find_condition(refused.status.conditions, reasons.MAPPED)
    assert condition is not None and condition.status == "False" and "no local user" in condition.message
    assert refused.spec.uid is None
    assert not connections.needs_mapping(refused)

    # The gateway asks again (a new requested-at): the bridge maps again, and its answer is a new transition.
    asked = datetime.now(UTC) + timedelta(seconds=2)
    ask = {"metadata": {"annotations": requested_at(asked)}}
    again = await kube.patch(UserConnection, NS, refused.metadata.name, ask)
    assert connections.needs_mapping(again)
    mapper.refuse = None
    await connections.map(again)
    mapped = find_condition((await current(kube)).status.conditions, reasons.MAPPED)
    assert mapped is not None and mapped.status == "True"


async def test_mapped_and_connected_are_written_by_their_own_owners_and_both_stay() -> None:
    connections, kube, _ = await world()
    name = (await current(kube)).metadata.name
    connected = {"type": reasons.CONNECTED, "status": "True", "reason": reasons.AUTO_CONNECTED, "message": "",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}  # fmt: skip
    stale = await current(kube)  # read before the gateway writes Connected
    await kube.apply_status(UserConnection, NS, name, {"conditions": [connected]}, field_manager="ucim-gateway")
    await connections.map(stale)
    both = {c.type: c.status for c in (await current(kube)).status.conditions}
    assert both == {reasons.CONNECTED: "True", reasons.MAPPED: "True"}


async def test_an_instance_of_a_user_without_connection_is_mapped_by_policy() -> None:
    connections, _, mapper = await world()
    assert await connections.account_for("bob") == ALICE
    assert mapper.calls == 1


async def alice_instance(kube: FakeKube) -> None:
    instance = UserInstance(
        metadata=ObjectMeta(name=UserInstance.name_for("alice#1", "local")),
        spec=UserInstanceSpec(ucloud_username="alice#1", cluster="local", local_user="alice", uid=1101),
    )
    await kube.create(instance, NS)


async def instance_exists(kube: FakeKube) -> bool:
    return await kube.get(UserInstance, NS, UserInstance.name_for("alice#1", "local")) is not None


async def test_an_unlinked_user_starts_nothing_and_keeps_the_uid() -> None:
    connections, kube, _ = await world()
    await connections.map(await current(kube))
    unlinked = [{"type": reasons.CONNECTED, "status": "False", "reason": reasons.UNLINKED, "message": "",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}]  # fmt: skip
    await kube.patch_status(UserConnection, NS, (await current(kube)).metadata.name, {"conditions": unlinked})
    with pytest.raises(MappingRefusedError, match="no longer connected"):
        await connections.account_for("alice#1")
    with pytest.raises(MappingRefusedError, match="no longer connected"):
        await connections.ensure_active("alice#1")
    assert (await current(kube)).spec.uid == 1101
    await connections.ensure_active("bob")  # no connection at all: nothing to refuse


async def test_an_expiry_stops_the_instance_when_it_comes() -> None:
    connections, kube, _ = await world()
    await alice_instance(kube)
    soon = datetime.now(UTC) + timedelta(milliseconds=200)
    name = (await current(kube)).metadata.name
    await kube.patch(UserConnection, NS, name, {"spec": {"expiresAt": soon.isoformat()}})
    connections.observe(await current(kube))
    assert await instance_exists(kube)
    for _ in range(100):
        if not await instance_exists(kube):
            break
        await asyncio.sleep(0.02)
    assert not await instance_exists(kube)
    with pytest.raises(MappingRefusedError):
        await connections.ensure_active("alice#1")


async def test_a_renewed_expiry_replaces_the_old_timer() -> None:
    connections, kube, _ = await world()
    await alice_instance(kube)
    name = (await current(kube)).metadata.name
    soon = datetime.now(UTC) + timedelta(milliseconds=100)
    await kube.patch(UserConnection, NS, name, {"spec": {"expiresAt": soon.isoformat()}})
    connections.observe(await current(kube))
    later = datetime.now(UTC) + timedelta(hours=1)
    await kube.patch(UserConnection, NS, name, {"spec": {"expiresAt": later.isoformat()}})
    connections.observe(await current(kube))  # the user connected again: a new expiry
    await asyncio.sleep(0.3)
    assert await instance_exists(kube)
    assert not await connections.expire("alice#1")
