"""The UCloud user <-> local account connections, kept as UserConnection resources.

The gateway owns a connection's life (create, the Connected condition, ``spec.expiresAt``,
the ``ucim.io/requested-at`` annotation that asks for a refused mapping to be tried again);
the bridge owns its mapping (``spec.localUser``/``spec.uid``, written once, and the
``Mapped`` condition); the operator tells Core when a connection has ended and records it
(``status.cleared``). Each applies its own condition under its own field manager, so
neither overwrites the other's. A connection is never deleted on unlink, only expired, so
a user who connects again gets the same uid back.

The connections come from a watch of the cluster's UserConnections (``informer``), as the
instances do (``instances.py``): a call reads that cache, not the apiserver.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from ucim.common import reasons
from ucim.common.conditions import ConditionStatus, find_condition, is_true
from ucim.common.connections import end_reason
from ucim.common.informer import Informer, synced
from ucim.common.kube import ConflictError, Kube
from ucim.common.resources import ObjectMeta, UserConnection, UserConnectionSpec, cluster_labels
from ucim.common.times import rfc3339
from ucim.common.user_instances import requested_at


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
    # The cluster's UserConnections, watched; None (or not listed yet): read from the apiserver.
    informer: Informer[UserConnection] | None = None

    def name_for(self, username: str) -> str:
        return UserConnection.name_for(username, self.cluster)

    async def get(self, username: str) -> UserConnection | None:
        if (cache := synced(self.informer)) is not None:
            return cache.get(self.name_for(username))
        return await self.kube.get(UserConnection, self.namespace, self.name_for(username))

    async def ensure(self, username: str, now: datetime) -> UserConnection:
        """The user's connection, created (unmapped, not yet connected) if there is none.

        A refused mapping is asked for again (a new requested-at), so that the bridge tries
        again: the account may exist now. The refusal stands until the bridge has answered.
        """
        connection = await self.get(username)
        if connection is None:
            connection = UserConnection(
                metadata=ObjectMeta(
                    name=self.name_for(username), namespace=self.namespace, labels=cluster_labels(self.cluster)
                ),
                spec=UserConnectionSpec(ucloud_username=username, cluster=self.cluster),
            )
            try:
                return self._written(await self.kube.create(connection, self.namespace))
            except ConflictError:  # created concurrently (or the watch is behind): take that one
                found = await self.kube.get(UserConnection, self.namespace, self.name_for(username))
                if found is None:
                    raise
                connection = found
        if connection.spec.uid is None and refused(connection) is not None:
            ask = {"metadata": {"annotations": requested_at(now)}}
            connection = self._written(
                await self.kube.patch(UserConnection, self.namespace, connection.metadata.name, ask)
            )
        return connection

    async def wait_mapped(self, username: str, asked_at: datetime) -> UserConnection:
        """Return once the bridge mapped the user (callers bound it with asyncio.timeout).

        Raises ConnectionRefusedError when the bridge refused the user since ``asked_at``
        (when :meth:`ensure` ran): a refusal from before is not the answer to this ask. The
        bridge flips Mapped to Unknown while it tries again, so its new answer is a new
        transition; conditions keep whole seconds, hence the rounding.
        """
        since = asked_at.replace(microsecond=0)

        def mapped_or_refused(connection: UserConnection | None) -> bool:
            if connection is None:
                return False
            if connection.spec.uid is not None:
                return True
            mapped = find_condition(connection.status.conditions, reasons.MAPPED)
            if mapped is not None and mapped.status == "False" and mapped.last_transition_time >= since:
                raise ConnectionRefusedError(mapped.message)
            return False

        name = self.name_for(username)
        if (cache := synced(self.informer)) is not None:
            found = await cache.wait_for(name, mapped_or_refused)
        else:
            found = await self.kube.wait_for(UserConnection, self.namespace, name, mapped_or_refused)
        if found is None:  # mapped_or_refused holds only for an object
            raise ConnectionRefusedError("the connection was deleted")
        return found

    async def mark_connected(self, connection: UserConnection, reason: str, now: datetime) -> UserConnection:
        """Connected=True, and a fresh expiry (or none) in place of an old one."""
        expires = None if self.expire_after_ms is None else rfc3339(now + timedelta(milliseconds=self.expire_after_ms))
        if expires is not None or connection.spec.expires_at is not None:  # (a login storm's writes count)
            patch = {"spec": {"expiresAt": expires}}
            connection = self._written(
                await self.kube.patch(UserConnection, self.namespace, connection.metadata.name, patch)
            )
        return await self._set_connected(connection, "True", reason, "connected through UCloud", now)

    async def mark_unlinked(self, connection: UserConnection, now: datetime) -> UserConnection:
        """Expired now; the mapping (uid) is kept, so the user gets the same uid on a new connection.

        Connected=False goes first: whoever sees the new expiry (the operator, which tells Core)
        then sees why it came.
        """
        connection = await self._set_connected(
            connection, "False", reasons.UNLINKED, "the user unlinked the provider", now
        )
        patch = {"spec": {"expiresAt": rfc3339(now)}}
        return self._written(await self.kube.patch(UserConnection, self.namespace, connection.metadata.name, patch))

    async def _set_connected(
        self, connection: UserConnection, status: ConditionStatus, reason: str, message: str, now: datetime
    ) -> UserConnection:
        """Apply the gateway's one condition; the bridge's Mapped is its own and stays as it is."""
        applied = await self.kube.apply_condition(
            UserConnection,
            self.namespace,
            connection.metadata.name,
            connection.status.conditions,
            (reasons.CONNECTED, status, reason, message),
            observed_generation=connection.metadata.generation,
            now=now,
        )
        return self._written(applied)

    def _written(self, connection: UserConnection) -> UserConnection:
        """``connection`` as a write of ours answered: the next call reads it, even before the watch has it."""
        return self.informer.remember(connection) if self.informer is not None else connection


def ended_why(connection: UserConnection | None, now: datetime) -> str | None:
    """Why a user whose connection has ended must connect again (in words for them), or None."""
    why = None if connection is None else end_reason(connection, now)
    if why == reasons.UNLINKED:
        return "you disconnected from this provider; connect again in UCloud"
    if why == reasons.EXPIRED:
        return "your connection to this provider expired; connect again in UCloud"
    return None


def refused(connection: UserConnection) -> str | None:
    """Why the bridge refused to map the user, or None."""
    mapped = find_condition(connection.status.conditions, reasons.MAPPED)
    return mapped.message if mapped is not None and mapped.status == "False" else None
