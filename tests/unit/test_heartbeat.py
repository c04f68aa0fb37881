"""The bridge's heartbeat: a Lease created once and renewed."""

from __future__ import annotations

import typing
from datetime import UTC, datetime, timedelta

from tests.support.fake_kube import FakeKube
from ucim.common.kube import Kube
from ucim.common.resources import Lease, LeaseSpec, ObjectMeta, cluster_labels
from ucim.slurm_bridge.heartbeat import renew

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def test_the_lease_is_created_then_renewed_and_expires_when_it_is_not() -> None:
    kube = FakeKube()
    lease = Lease(
        metadata=ObjectMeta(name=Lease.name_for("frontend-1"), labels=cluster_labels("local")),
        spec=LeaseSpec(holder_identity="frontend-1", lease_duration_seconds=30),
    )
    await renew(typing.cast(Kube, kube), "ns", lease, T0)
    await renew(typing.cast(Kube, kube), "ns", lease, T0 + timedelta(seconds=10))
    stored = await kube.get(Lease, "ns", lease.metadata.name)
    assert stored is not None
    # Kubernetes' MicroTime: six fractional digits, always.
    assert kube.objects[("leases", "ns", lease.metadata.name)]["spec"]["renewTime"] == "2026-03-01T12:00:10.000000Z"
    assert stored.spec.holder_identity == "frontend-1"
    assert stored.metadata.labels == {"ucim.io/cluster": "local"}
    assert not stored.expired(T0 + timedelta(seconds=40))
    assert stored.expired(T0 + timedelta(seconds=41))
