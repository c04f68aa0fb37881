"""The UCloud user <-> local account connections, kept as UserConnection resources.

The gateway owns a connection's life (create, Connected condition, ``spec.expiresAt``);
the bridge owns its mapping (``spec.localUser``/``spec.uid``, written once, and the
``Mapped`` condition). A connection is never deleted on unlink, only expired, so a user
who connects again gets the same uid back.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta

from ucim.common import reasons
from ucim.common.conditions import ConditionStatus, find_condition, is_true, set_condition
from ucim.common.kube import ConflictError, Kube
from ucim.common.resources import ObjectMeta, UserConnection, UserConnectionSpec
from ucim.common.times import rfc3339

POLL_INTERVAL = 0.02


class ConnectionRefusedError(Exception):
    """The bridge could not map the user to a local account; the message says why."""


def is_connected(connection: UserConnection | None, now: datetime) -> bool:
    """Connected: approved (or auto-connected) and not expired."""
    if connection is None or not is_true(connection.status.conditions, reasons.CONNECTED):
        return False
    return connection.spec.expires_at is None or connection.spec.expires_at > now


@dataclass
class Connections:
    kube: Kube
    namespace: str
    cluster: str
    expire_after_ms: int | None = None

    def name_for(self, username: str) -> str:
        return UserConnection.name_for(username, self.cluster)

    async def get(self, username: str) -> UserConnection | None:
        return await self.kube.get(UserConnection, self.namespace, self.name_for(username))

    async def ensure(self, username: str) -> UserConnection:
        """The user's connection, created (unmapped, not yet connected) if there is none.

        A refused mapping is forgotten, so that the bridge tries again (the account may exist now).
        """
        connection = await self.get(username)
        if connection is None:
            connection = UserConnection(
                metadata=ObjectMeta(name=self.name_for(username), namespace=self.namespace),
                spec=UserConnectionSpec(ucloud_username=username, cluster=self.cluster),
            )
            try:
                return await self.kube.create(connection, self.namespace)
            except ConflictError:  # created concurrently: take that one
                return await self.ensure(username)
        mapped = find_condition(connection.status.conditions, reasons.MAPPED)
        if connection.spec.uid is None and mapped is not None and mapped.status == "False":
            others = [c.to_dict() for c in connection.status.conditions if c.type != reasons.MAPPED]
            connection = await self.kube.patch_status(
                UserConnection, self.namespace, connection.metadata.name, {"conditions": others}
            )
        return connection

    async def wait_mapped(self, username: str) -> UserConnection:
        """Return once the bridge mapped the user (callers bound it with asyncio.timeout).

        Raises ConnectionRefusedError when the bridge refused the user.
        """
        while True:
            connection = await self.get(username)
            if connection is not None:
                if connection.spec.uid is not None:
                    return connection
                mapped = find_condition(connection.status.conditions, reasons.MAPPED)
                if mapped is not None and mapped.status == "False":
                    raise ConnectionRefusedError(mapped.message)
            await asyncio.sleep(POLL_INTERVAL)

    async def mark_connected(self, connection: UserConnection, reason: str, now: datetime) -> UserConnection:
        """Connected=True, and a fresh expiry (or none) in place of an old one."""
        expires = None if self.expire_after_ms is None else rfc3339(now + timedelta(milliseconds=self.expire_after_ms))
        name = connection.metadata.name
        await self.kube.patch(UserConnection, self.namespace, name, {"spec": {"expiresAt": expires}})
        return await self._set_connected(name, "True", reason, "connected through UCloud", now)

    async def mark_unlinked(self, connection: UserConnection, now: datetime) -> UserConnection:
        """Expired now; the mapping (uid) is kept, so the user gets the same uid on a new connection."""
        name = connection.metadata.name
        await self.kube.patch(UserConnection, self.namespace, name, {"spec": {"expiresAt": rfc3339(now)}})
        return await self._set_connected(name, "False", reasons.UNLINKED, "the user unlinked the provider", now)

    async def _set_connected(
        self, name: str, status: ConditionStatus, reason: str, message: str, now: datetime
    ) -> UserConnection:
        current = await self.kube.get(UserConnection, self.namespace, name)
        conditions = set_condition(
            current.status.conditions if current else [],
            reasons.CONNECTED,
            status,
            reason=reason,
            message=message,
            observed_generation=current.metadata.generation if current else None,
            now=now,
        )
        patch = {"conditions": [c.to_dict() for c in conditions]}
        return await self.kube.patch_status(UserConnection, self.namespace, name, patch)
