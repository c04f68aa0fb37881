"""The operator tells Core when a connection ends: once, when its expiry comes, and never again after a restart.

Kubernetes is faked in memory and the watch is played by handing the clearer each change
(``on_event``); Core is the in-process stand-in. Timers run on the real loop, with short expiries.
"""

from __future__ import annotations

import asyncio
import typing
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr

from tests.support.fake_kube import FakeKube
from ucim.common import reasons
from ucim.common.core_client import CLEAR_CONNECTION_PATH, CoreClient
from ucim.common.kube import Kube, UnavailableError
from ucim.common.resources import (
    ConnectionCleared,
    ObjectMeta,
    UserConnection,
    UserConnectionSpec,
    cluster_labels,
)
from ucim.common.times import now_utc, rfc3339
from ucim.operator.connections import ConnectionClearer, clear_due_at
from ucim.testing import CoreStandIn

NS = "ns"
USER = "alice#1"
NAME = UserConnection.name_for(USER, "local")
SOON = timedelta(milliseconds=150)


@pytest.fixture
async def core() -> AsyncIterator[CoreStandIn]:
    standin = CoreStandIn("ucim", "refresh-token")
    await standin.start()
    yield standin
    await standin.stop()


@pytest.fixture
async def client(core: CoreStandIn) -> AsyncIterator[CoreClient]:
    # One attempt per call: the clearer's own retries are what is tested.
    client = CoreClient(core.url, SecretStr("refresh-token"), attempts=1)
    yield client
    await client.close()


def clearer_for(client: CoreClient, kube: FakeKube) -> ConnectionClearer:
    kube_ = typing.cast(Kube, kube)
    return ConnectionClearer(client, kube_, namespace=NS, cluster="local", first_retry_seconds=0.02)


def connected(status: str = "True", reason: str = reasons.CONNECTION_APPROVED) -> dict[str, Any]:
    return {"type": reasons.CONNECTED, "status": status, "reason": reason, "message": "",
            "lastTransitionTime": rfc3339(now_utc())}  # fmt: skip


async def make_connection(
    kube: FakeKube, expires_at: datetime | None, condition: dict[str, Any] | None = None
) -> UserConnection:
    made = UserConnection(
        metadata=ObjectMeta(name=NAME, labels=cluster_labels("local")),
        spec=UserConnectionSpec(ucloud_username=USER, cluster="local", local_user="alice", uid=1101),
    )
    await kube.create(made, NS)
    spec = {"expiresAt": None if expires_at is None else expires_at.isoformat()}
    await kube.patch(UserConnection, NS, NAME, {"spec": spec})
    if condition is not None:
        await kube.patch_status(UserConnection, NS, NAME, {"conditions": [condition]})
    return await current(kube)


async def current(kube: FakeKube) -> UserConnection:
    found = await kube.get(UserConnection, NS, NAME)
    assert found is not None
    return found


def cleared_count(reason: str) -> float:
    return REGISTRY.get_sample_value("ucim_connections_cleared_total", {"reason": reason}) or 0.0


async def settle(clearer: ConnectionClearer, kube: FakeKube, seconds: float = 0.3) -> None:
    """Let timers fire and clears run, handing the clearer each write as the watch would."""
    end = asyncio.get_running_loop().time() + seconds
    seen = None
    while asyncio.get_running_loop().time() < end:
        found = await kube.get(UserConnection, NS, NAME)
        if found is not None and found.metadata.resource_version != seen:
            seen = found.metadata.resource_version
            clearer.on_event("MODIFIED", found)
        await asyncio.sleep(0.01)


# --- when a clear is due ------------------------------------------------------------------


def test_a_clear_is_due_at_the_expiry_of_a_connection_that_was_connected_and_not_yet_cleared() -> None:
    at = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=now_utc().tzinfo)
    spec = UserConnectionSpec(ucloud_username=USER, cluster="local", expires_at=at)
    never = UserConnection(metadata=ObjectMeta(name=NAME), spec=spec)
    assert clear_due_at(never) is None  # no Connected condition: it never began
    approved = UserConnection.from_obj({**never.to_manifest(), "status": {"conditions": [connected()]}})
    assert clear_due_at(approved) == at
    no_expiry = approved.model_copy(update={"spec": spec.model_copy(update={"expires_at": None})})
    assert clear_due_at(no_expiry) is None
    # Recorded through the apiserver's JSON and read back: the same instant, to the microsecond.
    record = ConnectionCleared(expires_at=at, cleared_at=at, reason="Expired").to_dict()
    told = UserConnection.from_obj({**approved.to_manifest(), "status": {"conditions": [connected()],
                                                                         "cleared": record}})  # fmt: skip
    assert clear_due_at(told) is None
    # Connected again since: a new expiry, due again.
    later = at + timedelta(days=7)
    renewed = told.model_copy(update={"spec": spec.model_copy(update={"expires_at": later})})
    assert clear_due_at(renewed) == later


# --- the timer ----------------------------------------------------------------------------


async def test_an_expiry_is_cleared_at_core_once_when_it_comes_and_recorded(
    core: CoreStandIn, client: CoreClient
) -> None:
    kube = FakeKube()
    clearer = clearer_for(client, kube)
    before = cleared_count("expired")
    expires = now_utc() + SOON
    clearer.on_event("ADDED", await make_connection(kube, expires, connected()))
    await asyncio.sleep(0.05)
    assert core.record.cleared_connections == []  # not before its time

    await core.record.wait_for_cleared(USER, 2.0)
    await settle(clearer, kube)
    assert core.record.cleared_connections == [USER]
    cleared = (await current(kube)).status.cleared
    assert cleared is not None and (cleared.expires_at, cleared.reason) == (expires, reasons.EXPIRED)
    assert cleared.cleared_at >= expires
    assert cleared_count("expired") == before + 1
    assert clearer._timers.get(NAME) is None  # the record ends the connection's timer


async def test_a_restarted_operator_clears_what_expired_while_it_was_down_and_nothing_twice(
    core: CoreStandIn, client: CoreClient
) -> None:
    kube = FakeKube()
    await make_connection(kube, now_utc() - timedelta(minutes=5), connected())
    first = clearer_for(client, kube)
    first.on_event("ADDED", await current(kube))  # the list after a start: already past, cleared at once
    await core.record.wait_for_cleared(USER, 2.0)
    await settle(first, kube)

    second = clearer_for(client, kube)  # started again: lists the same connection, now recorded
    second.on_event("ADDED", await current(kube))
    await settle(second, kube)
    assert core.record.cleared_connections == [USER]
    assert second._timers == {}


async def test_a_user_who_connects_again_before_the_expiry_is_not_cleared(
    core: CoreStandIn, client: CoreClient
) -> None:
    kube = FakeKube()
    clearer = clearer_for(client, kube)
    clearer.on_event("ADDED", await make_connection(kube, now_utc() + SOON, connected()))
    # Connected again: a new expiry. The timer reads the connection afresh, before the watch told it.
    later = now_utc() + timedelta(hours=1)
    await kube.patch(UserConnection, NS, NAME, {"spec": {"expiresAt": later.isoformat()}})
    await asyncio.sleep(SOON.total_seconds() + 0.1)
    assert core.record.cleared_connections == []
    clearer.on_event("MODIFIED", await current(kube))  # now the watch brings it: one timer, at the new expiry
    assert clearer._timers[NAME][0] == later
    clearer._timers[NAME][1].cancel()


async def test_a_connection_never_connected_or_without_expiry_has_no_timer(client: CoreClient) -> None:
    kube = FakeKube()
    clearer = clearer_for(client, kube)
    clearer.on_event("ADDED", await make_connection(kube, now_utc() - timedelta(seconds=1)))
    assert clearer._timers == {}
    await kube.patch_status(UserConnection, NS, NAME, {"conditions": [connected()]})
    await kube.patch(UserConnection, NS, NAME, {"spec": {"expiresAt": None}})
    clearer.on_event("MODIFIED", await current(kube))
    assert clearer._timers == {}


async def test_an_unlinked_user_is_cleared_with_that_reason(core: CoreStandIn, client: CoreClient) -> None:
    kube = FakeKube()
    clearer = clearer_for(client, kube)
    before = cleared_count("unlinked")
    unlinked = connected("False", reasons.UNLINKED)
    clearer.on_event("ADDED", await make_connection(kube, now_utc(), unlinked))
    await core.record.wait_for_cleared(USER, 2.0)
    await settle(clearer, kube)
    cleared = (await current(kube)).status.cleared
    assert cleared is not None and cleared.reason == reasons.UNLINKED
    assert cleared_count("unlinked") == before + 1


async def test_a_deleted_connection_drops_its_timer(core: CoreStandIn, client: CoreClient) -> None:
    kube = FakeKube()
    clearer = clearer_for(client, kube)
    made = await make_connection(kube, now_utc() + SOON, connected())
    clearer.on_event("ADDED", made)
    clearer.on_event("DELETED", made)
    await asyncio.sleep(SOON.total_seconds() + 0.1)
    assert core.record.cleared_connections == []
    assert clearer._timers == {}


# --- failures ------------------------------------------------------------------------------


async def test_core_down_is_retried_until_it_takes_the_clear(core: CoreStandIn, client: CoreClient) -> None:
    kube = FakeKube()
    clearer = clearer_for(client, kube)
    core.fail_requests(CLEAR_CONNECTION_PATH, times=3)
    clearer.on_event("ADDED", await make_connection(kube, now_utc(), connected()))
    await core.record.wait_for_cleared(USER, 3.0)
    await settle(clearer, kube)
    assert core.record.requests[CLEAR_CONNECTION_PATH] == 4
    assert core.record.cleared_connections == [USER]
    assert (await current(kube)).status.cleared is not None


async def test_core_refusing_is_its_final_word(core: CoreStandIn, client: CoreClient) -> None:
    kube = FakeKube()
    clearer = clearer_for(client, kube)
    core.fail_requests(CLEAR_CONNECTION_PATH, status=400)
    clearer.on_event("ADDED", await make_connection(kube, now_utc(), connected()))
    await settle(clearer, kube)
    assert core.record.requests[CLEAR_CONNECTION_PATH] == 1
    assert (await current(kube)).status.cleared is None


class StatusWritesFailOnce(FakeKube):
    """The apiserver away for one status write."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    async def patch_status(self, *args: Any, **kwargs: Any) -> Any:
        if not self.failed and "cleared" in args[3]:
            self.failed = True
            raise UnavailableError("the apiserver is away")
        return await super().patch_status(*args, **kwargs)


async def test_a_record_that_fails_is_written_again_without_telling_core_twice(
    core: CoreStandIn, client: CoreClient
) -> None:
    kube = StatusWritesFailOnce()
    clearer = clearer_for(client, kube)
    clearer.on_event("ADDED", await make_connection(kube, now_utc(), connected()))
    await core.record.wait_for_cleared(USER, 2.0)
    await settle(clearer, kube)
    assert kube.failed
    assert (await current(kube)).status.cleared is not None
    assert core.record.cleared_connections == [USER]
