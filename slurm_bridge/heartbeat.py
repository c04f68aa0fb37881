"""The bridge's heartbeat: a Lease renewed while the bridge runs.

A UserInstance the bridge marked Ready stays Ready in the apiserver if the bridge is killed
(SIGKILL, a host gone): nobody is left to say otherwise. The Lease bounds how stale that can
be, as kubelets' node leases do: the gateway treats the instances of a bridge whose Lease has
not been renewed within ``leaseDurationSeconds`` as not ready, so Core gets a 449 (and init a
503) instead of calls that fail with 502. A writer on a timer, as a heartbeat must be; it
reads nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from ucim.common.kube import Kube, NotFoundError
from ucim.common.resources import Lease, LeaseSpec, ObjectMeta, cluster_labels
from ucim.common.retry import retrying
from ucim.common.times import micro_time, now_utc

log = logging.getLogger(__name__)


async def renew(kube: Kube, namespace: str, lease: Lease, now: datetime) -> None:
    """Renew the Lease, creating it when it is not there."""
    spec = {"holderIdentity": lease.spec.holder_identity, "leaseDurationSeconds": lease.spec.lease_duration_seconds}
    try:
        await kube.patch(Lease, namespace, lease.metadata.name, {"spec": {**spec, "renewTime": micro_time(now)}})
    except NotFoundError:
        created = lease.to_manifest()
        created["spec"]["renewTime"] = micro_time(now)
        await kube.create(Lease.from_obj(created), namespace)


async def keep_lease(
    kube: Kube,
    namespace: str,
    *,
    bridge: str,
    cluster: str,
    duration_seconds: int,
    clock: Callable[[], datetime] = now_utc,
) -> None:
    """Renew the bridge's Lease every third of its duration, until cancelled."""
    lease = Lease(
        metadata=ObjectMeta(name=Lease.name_for(bridge), labels=cluster_labels(cluster)),
        spec=LeaseSpec(holder_identity=bridge, lease_duration_seconds=duration_seconds),
    )
    while True:
        async for attempt in retrying(first=1.0, cap=duration_seconds / 3, log=log, what="renewing the bridge's Lease"):
            with attempt:
                await renew(kube, namespace, lease, clock())
        await asyncio.sleep(duration_seconds / 3)
