"""Finding, creating and waking a user's UserInstance, and waiting for it to be Ready."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from ucim.common.conditions import find_condition, is_true
from ucim.common.kube import ConflictError, Kube
from ucim.common.reasons import MAPPED, READY, REQUESTED_AT_ANNOTATION
from ucim.common.resources import ObjectMeta, UserInstance, UserInstanceSpec

POLL_INTERVAL = 0.02


class MappingRefusedError(Exception):
    """The user cannot be mapped to a local account; the message says why."""


@dataclass
class Instances:
    kube: Kube
    namespace: str
    cluster: str
    idle_timeout_seconds: int

    def name_for(self, username: str) -> str:
        return UserInstance.name_for(username, self.cluster)

    async def get(self, username: str) -> UserInstance | None:
        return await self.kube.get(UserInstance, self.namespace, self.name_for(username))

    async def is_ready(self, username: str) -> bool:
        instance = await self.get(username)
        return instance is not None and is_true(instance.status.conditions, READY)

    async def ensure(self, username: str) -> UserInstance:
        """Create the user's instance, or ask the bridge to start it again if it is not Ready."""
        instance = await self.get(username)
        if instance is None:
            instance = UserInstance(
                metadata=ObjectMeta(name=self.name_for(username), namespace=self.namespace),
                spec=UserInstanceSpec(
                    ucloud_username=username, cluster=self.cluster, idle_timeout_seconds=self.idle_timeout_seconds
                ),
            )
            try:
                return await self.kube.create(instance, self.namespace)
            except ConflictError:  # created concurrently: take that one
                return await self.ensure(username)
        if not is_true(instance.status.conditions, READY):
            wake = {"metadata": {"annotations": {REQUESTED_AT_ANNOTATION: f"{time.time():.3f}"}}}
            instance = await self.kube.patch(UserInstance, self.namespace, instance.metadata.name, wake)
        return instance

    async def wait_ready(self, username: str) -> None:
        """Return once the instance is Ready (callers bound it with asyncio.timeout).

        Raises MappingRefusedError when the bridge could not map the user.
        """
        while True:
            instance = await self.get(username)
            if instance is not None:
                if is_true(instance.status.conditions, READY):
                    return
                mapped = find_condition(instance.status.conditions, MAPPED)
                if mapped is not None and mapped.status == "False":
                    raise MappingRefusedError(mapped.message)
            await asyncio.sleep(POLL_INTERVAL)
