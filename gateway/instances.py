"""Finding, creating and waking a user's UserInstance, and waiting for it to be Ready.

Ready is the bridge's word, and a bridge that was killed cannot take it back: an instance
counts as ready only while its bridge's Lease (``slurm_bridge/heartbeat.py``) is fresh.

The instances come from a watch of the cluster's UserInstances (``informer``): a call for a user,
an ``integration/init`` and its wait for Ready read that cache, not the apiserver. A login storm
(every user of a provider that restarted) made ~10 reads and a watch of its own per login
otherwise, and those saturated the apiserver on a 2-core VM from about 100 logins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from ucim.common.conditions import is_true
from ucim.common.informer import Informer, synced
from ucim.common.kube import Kube
from ucim.common.reasons import READY
from ucim.common.resources import Lease, UserInstance
from ucim.common.times import now_utc
from ucim.common.user_instances import ensure_user_instance, refusal


class MappingRefusedError(Exception):
    """The user cannot be mapped to a local account; the message says why."""


@dataclass
class Instances:
    kube: Kube
    namespace: str
    cluster: str
    idle_timeout_seconds: int
    # The bridges' Leases, watched; None: not watched, every Ready is taken as it is.
    leases: Informer[Lease] | None = None
    # The cluster's UserInstances, watched; None (or not listed yet): read from the apiserver.
    informer: Informer[UserInstance] | None = None
    clock: Callable[[], datetime] = field(default=now_utc)

    def bridge_alive(self, instance: UserInstance) -> bool:
        """The instance's bridge renews its Lease (a bridge without one, or not known yet, is trusted)."""
        if self.leases is None or instance.status.bridge is None:
            return True
        lease = self.leases.get(Lease.name_for(instance.status.bridge))
        return lease is None or not lease.expired(self.clock())

    def ready(self, instance: UserInstance | None) -> bool:
        """Ready, by a bridge that is alive."""
        return instance is not None and is_true(instance.status.conditions, READY) and self.bridge_alive(instance)

    def ready_or_refused(self, instance: UserInstance | None) -> bool:
        """Whether ``instance`` is ready; MappingRefusedError if the bridge refused its user."""
        if self.ready(instance):
            return True
        if instance is not None and (why := refusal(instance)) is not None:
            raise MappingRefusedError(why)
        return False

    def name_for(self, username: str) -> str:
        return UserInstance.name_for(username, self.cluster)

    async def get(self, username: str) -> UserInstance | None:
        if (cache := synced(self.informer)) is not None:
            return cache.get(self.name_for(username))
        return await self.kube.get(UserInstance, self.namespace, self.name_for(username))

    async def is_ready(self, username: str) -> bool:
        return self.ready(await self.get(username))

    async def ensure(self, username: str) -> UserInstance:
        """Create the user's instance, or ask the bridge to start it again if it is not Ready.

        A refused user is asked for again too: they come back through Core, and the
        account may exist by now.
        """
        cache = synced(self.informer)
        instance = await ensure_user_instance(
            self.kube,
            self.namespace,
            username,
            self.cluster,
            idle_timeout_seconds=self.idle_timeout_seconds,
            now=now_utc(),
            retry_refused=True,
            known=(cache.get(self.name_for(username)),) if cache is not None else None,
        )
        # As the write answered: the next init reads it, even before the watch has it.
        return self.informer.remember(instance) if self.informer is not None else instance

    async def wait_ready(self, username: str) -> None:
        """Return once the instance is Ready (callers bound it with asyncio.timeout).

        Raises MappingRefusedError when the bridge could not map the user.
        """
        if (cache := synced(self.informer)) is not None:
            await cache.wait_for(self.name_for(username), self.ready_or_refused)
        else:
            await self.kube.wait_for(UserInstance, self.namespace, self.name_for(username), self.ready_or_refused)
