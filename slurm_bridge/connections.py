"""The bridge's half of the connections: mapping UserConnections to local accounts.

A UserConnection (created by the gateway) is the one source of a UCloud user's uid. The
bridge watches those of its cluster and, for each without ``spec.uid`` that was not
refused, writes ``spec.localUser``/``spec.uid`` once (the CRD forbids changing them):

* if the user's UserInstance was already mapped (instances started before the user
  connected), its account is adopted, so the uid never changes;
* otherwise the mapping policy (``mapping.Mapper``) runs.

A refusal is ``Mapped=False MappingRefused`` with the reason; the gateway asks again by
stamping ``ucim.io/requested-at`` on the connection, and the bridge answers each new stamp
(``Mapped=Unknown MappingRetried`` first, so that its answer is a new transition). Mapped is
the bridge's own condition, applied under its field manager (the gateway owns Connected).
A mapping that fails for another reason (the apiserver away) is retried with backoff.
``account_for`` is what the UserInstance loop calls: it takes the
account from the connection when there is one, so instances and connections agree.

A connection that has **ended** (the user unlinked, or ``spec.expiresAt`` passed) keeps its
uid but starts nothing: ``account_for`` refuses it until the user connects again, and when
an expiry comes the bridge stops the user's instance (it deletes the UserInstance, as the
gateway does on unlink), so a job or a late request cannot revive it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from ucim.common import reasons
from ucim.common.conditions import ConditionStatus, find_condition
from ucim.common.connections import has_ended
from ucim.common.informer import Change, Informer, synced
from ucim.common.kube import ConflictError, InvalidError, Kube
from ucim.common.resources import UserConnection, UserInstance, cluster_selector
from ucim.common.retry import retrying
from ucim.slurm_bridge.mapping import LocalAccount, Mapper, MappingRefusedError

log = logging.getLogger(__name__)


class ConnectionMapper:
    def __init__(
        self,
        *,
        kube: Kube,
        namespace: str,
        cluster: str,
        mapper: Mapper,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        watch_timeout_seconds: int = 300,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.cluster = cluster
        self.mapper = mapper
        self.clock = clock
        self.connections = Informer(
            kube,
            UserConnection,
            namespace,
            label_selector=cluster_selector(cluster),
            on_event=self.on_event,
            watch_timeout_seconds=watch_timeout_seconds,
        )
        # The UserInstances as the instance loop's watch has them (set by the bridge once that loop exists).
        self.instances: Informer[UserInstance] | None = None
        self._busy: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        # The requested-at each refusal answered: only a new one is mapped again.
        self._refused_at: dict[str, str | None] = {}
        # Connection name -> (expiry, timer) of the expiries ahead of us.
        self._expiries: dict[str, tuple[datetime, asyncio.TimerHandle]] = {}
        # Others that act on connections (the workspace controller): told of every change, after the mapping.
        self.listeners: list[Callable[[Change, UserConnection], None]] = []

    async def run(self) -> None:
        """Watch this cluster's connections until cancelled."""
        await self.connections.run()

    def on_event(self, change: Change, connection: UserConnection) -> None:
        if change == "DELETED":
            self._forget_expiry(connection.metadata.name)
        else:
            self.observe(connection)
        for listener in self.listeners:
            listener(change, connection)

    def observe(self, connection: UserConnection) -> None:
        """Map ``connection`` (in the background) if it waits for a mapping; mind its expiry."""
        name = connection.metadata.name
        self._schedule_expiry(connection)
        if not self.needs_mapping(connection) or name in self._busy:
            return
        self._busy.add(name)
        self._spawn(self._map_retried(name), f"connection-{name}")

    def needs_mapping(self, connection: UserConnection) -> bool:
        """Not mapped, and not refused, or refused and asked again since (a new requested-at)."""
        if connection.spec.uid is not None:
            return False
        mapped = find_condition(connection.status.conditions, reasons.MAPPED)
        if mapped is None or mapped.status != "False":
            return True
        return _requested_at(connection) != self._refused_at.get(connection.metadata.name)

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _schedule_expiry(self, connection: UserConnection) -> None:
        name, expires = connection.metadata.name, connection.spec.expires_at
        known = self._expiries.get(name)
        if known is not None and known[0] == expires:
            return
        self._forget_expiry(name)
        if expires is None:
            return
        delay = max(0.0, (expires - self.clock()).total_seconds())
        username = connection.spec.ucloud_username
        timer = asyncio.get_running_loop().call_later(
            delay, lambda: self._spawn(self._expire_logged(username), f"expire-{name}")
        )
        self._expiries[name] = (expires, timer)

    def _forget_expiry(self, name: str) -> None:
        known = self._expiries.pop(name, None)
        if known is not None:
            known[1].cancel()

    async def _expire_logged(self, ucloud_username: str) -> None:
        try:
            await self.expire(ucloud_username)
        except Exception:
            log.exception("stopping an expired connection's instance failed", extra={"ucloud_user": ucloud_username})

    async def expire(self, ucloud_username: str) -> bool:
        """Stop the user's instance if their connection has ended by now; whether it had."""
        name = UserConnection.name_for(ucloud_username, self.cluster)
        connection = await self._connection(name)
        if connection is None or not has_ended(connection, self.clock()):
            return False
        instance = UserInstance.name_for(ucloud_username, self.cluster)
        await self.kube.delete(UserInstance, self.namespace, instance)
        log.info("connection expired: instance stopped", extra={"userconnection": name, "userinstance": instance})
        return True

    async def _map_retried(self, name: str) -> None:
        """Map the newest copy the watch has of the connection; failures (not refusals) are retried with backoff."""
        try:
            async for attempt in retrying(first=0.5, cap=30.0, log=log, what=f"mapping UserConnection {name}"):
                with attempt:
                    connection = self.connections.get(name)
                    if connection is not None and self.needs_mapping(connection):
                        await self.map(connection)
        finally:
            self._busy.discard(name)

    async def map(self, connection: UserConnection) -> None:
        """Write the account of ``connection``'s user, or why there is none."""
        name, username = connection.metadata.name, connection.spec.ucloud_username
        mapped = find_condition(connection.status.conditions, reasons.MAPPED)
        if mapped is not None and mapped.status == "False":
            # Asked again after a refusal: say so, so that the answer below is a transition of its own.
            connection = await self._set_mapped(connection, "Unknown", reasons.MAPPING_RETRIED, "mapping again")
        try:
            account = await self._adopted(username) or await self.mapper.map(username)
        except MappingRefusedError as refusal:
            log.warning("user refused", extra={"userconnection": name, "why": str(refusal)})
            self._refused_at[name] = _requested_at(connection)
            await self._set_mapped(connection, "False", reasons.MAPPING_REFUSED, str(refusal))
            return
        await self._record(connection, account)

    async def account_for(self, ucloud_username: str) -> LocalAccount:
        """The account of a user's instance: the connection's, or mapped now (and recorded there).

        Raises MappingRefusedError when the user's connection has ended (unlinked or expired).
        """
        name = UserConnection.name_for(ucloud_username, self.cluster)
        connection = await self._connection(name)
        self._refuse_ended(connection)
        if connection is not None and connection.spec.uid is not None:
            return self.mapper.resolve(connection.spec.uid, connection.spec.local_user)
        account = await self.mapper.map(ucloud_username)
        if connection is None:
            return account  # an instance started without a connection: the connection adopts it later
        recorded = await self._record(connection, account)
        if recorded.spec.uid is None or recorded.spec.uid == account.uid:
            return account
        return self.mapper.resolve(recorded.spec.uid, recorded.spec.local_user)

    async def ensure_active(self, ucloud_username: str) -> None:
        """Raise MappingRefusedError if the user's connection has ended; no connection is fine."""
        name = UserConnection.name_for(ucloud_username, self.cluster)
        self._refuse_ended(await self._connection(name))

    def _refuse_ended(self, connection: UserConnection | None) -> None:
        if connection is not None and has_ended(connection, self.clock()):
            username = connection.spec.ucloud_username
            raise MappingRefusedError(f"{username} is no longer connected to this provider (unlinked or expired)")

    async def _connection(self, name: str) -> UserConnection | None:
        """The connection as the watch has it: a login storm's reads are the apiserver's load (the apiserver
        is read until the watch has listed)."""
        if (cache := synced(self.connections)) is not None:
            return cache.get(name)
        return await self.kube.get(UserConnection, self.namespace, name)

    async def _adopted(self, ucloud_username: str) -> LocalAccount | None:
        name = UserInstance.name_for(ucloud_username, self.cluster)
        if (cache := synced(self.instances)) is not None:
            instance = cache.get(name)
        else:
            instance = await self.kube.get(UserInstance, self.namespace, name)
        if instance is None or instance.spec.uid is None:
            return None
        return self.mapper.resolve(instance.spec.uid, instance.spec.local_user)

    async def _record(self, connection: UserConnection, account: LocalAccount) -> UserConnection:
        name = connection.metadata.name
        try:
            recorded = await self.kube.patch(
                UserConnection, self.namespace, name, {"spec": {"localUser": account.name, "uid": account.uid}}
            )
        except (ConflictError, InvalidError):
            # Mapped by someone else meanwhile (the CRD keeps it from changing): theirs stands.
            fresh = await self.kube.get(UserConnection, self.namespace, name)
            if fresh is None or fresh.spec.uid is None:
                raise
            return fresh
        message = f"mapped to local user {account.name} ({account.uid})"
        recorded = await self._set_mapped(recorded, "True", reasons.USER_MAPPED, message)
        log.info(
            "UCloud user connected", extra={"userconnection": name, "local_user": account.name, "uid": account.uid}
        )
        return recorded

    async def _set_mapped(
        self, connection: UserConnection, status: ConditionStatus, reason: str, message: str
    ) -> UserConnection:
        """Apply the bridge's one condition; the gateway's Connected is its own and stays as it is."""
        return await self.kube.apply_condition(
            UserConnection,
            self.namespace,
            connection.metadata.name,
            connection.status.conditions,
            (reasons.MAPPED, status, reason, message),
            observed_generation=connection.metadata.generation,
        )


def _requested_at(connection: UserConnection) -> str | None:
    return (connection.metadata.annotations or {}).get(reasons.REQUESTED_AT_ANNOTATION)
