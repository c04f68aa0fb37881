"""The bridge's half of the connections: mapping UserConnections to local accounts.

A UserConnection (created by the gateway) is the one source of a UCloud user's uid. The
bridge watches those of its cluster and, for each without ``spec.uid`` that was not
refused, writes ``spec.localUser``/``spec.uid`` once (the CRD forbids changing them):

* if the user's UserInstance was already mapped (instances started before the user
  connected), its account is adopted, so the uid never changes;
* otherwise the mapping policy (``mapping.Mapper``) runs.

A refusal is ``Mapped=False MappingRefused`` with the reason; the gateway removes that
condition to ask again. ``account_for`` is what the UserInstance loop calls: it takes the
account from the connection when there is one, so instances and connections agree.
"""

from __future__ import annotations

import asyncio
import logging

from ucim.common import reasons
from ucim.common.conditions import ConditionStatus, find_condition, set_condition
from ucim.common.kube import ConflictError, InvalidError, Kube
from ucim.common.resources import UserConnection, UserInstance
from ucim.slurm_bridge.mapping import LocalAccount, Mapper, MappingRefusedError

log = logging.getLogger(__name__)


class ConnectionMapper:
    def __init__(self, *, kube: Kube, namespace: str, cluster: str, mapper: Mapper) -> None:
        self.kube = kube
        self.namespace = namespace
        self.cluster = cluster
        self.mapper = mapper
        self._busy: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, watch_timeout_seconds: int = 300) -> None:
        """List and watch forever; reconnect after errors."""
        delay = 1.0
        while True:
            try:
                for connection in await self.kube.list(UserConnection, self.namespace):
                    self.observe(connection)
                async for kind, connection in self.kube.watch(
                    UserConnection, self.namespace, timeout_seconds=watch_timeout_seconds
                ):
                    if kind != "DELETED":
                        self.observe(connection)
                delay = 1.0
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("UserConnection watch failed; reconnecting", extra={"delay": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def observe(self, connection: UserConnection) -> None:
        """Map ``connection`` (in the background) if it is ours and waits for a mapping."""
        name = connection.metadata.name
        if not needs_mapping(connection, self.cluster) or name in self._busy:
            return
        self._busy.add(name)
        task = asyncio.get_running_loop().create_task(self._map_logged(connection), name=f"connection-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _map_logged(self, connection: UserConnection) -> None:
        try:
            await self.map(connection)
        except Exception:
            log.exception("mapping UserConnection failed", extra={"userconnection": connection.metadata.name})
        finally:
            self._busy.discard(connection.metadata.name)

    async def map(self, connection: UserConnection) -> None:
        """Write the account of ``connection``'s user, or why there is none."""
        username = connection.spec.ucloud_username
        try:
            account = await self._adopted(username) or await self.mapper.map(username)
        except MappingRefusedError as refusal:
            log.warning("user refused", extra={"userconnection": connection.metadata.name, "why": str(refusal)})
            await self._set_mapped(connection.metadata.name, "False", reasons.MAPPING_REFUSED, str(refusal))
            return
        await self._record(connection.metadata.name, account)

    async def account_for(self, ucloud_username: str) -> LocalAccount:
        """The account of a user's instance: the connection's, or mapped now (and recorded there)."""
        name = UserConnection.name_for(ucloud_username, self.cluster)
        connection = await self.kube.get(UserConnection, self.namespace, name)
        if connection is not None and connection.spec.uid is not None:
            return self.mapper.resolve(connection.spec.uid, connection.spec.local_user)
        account = await self.mapper.map(ucloud_username)
        if connection is None:
            return account  # an instance started without a connection: the connection adopts it later
        recorded = await self._record(name, account)
        if recorded.spec.uid is None or recorded.spec.uid == account.uid:
            return account
        return self.mapper.resolve(recorded.spec.uid, recorded.spec.local_user)

    async def _adopted(self, ucloud_username: str) -> LocalAccount | None:
        instance = await self.kube.get(
            UserInstance, self.namespace, UserInstance.name_for(ucloud_username, self.cluster)
        )
        if instance is None or instance.spec.uid is None:
            return None
        return self.mapper.resolve(instance.spec.uid, instance.spec.local_user)

    async def _record(self, name: str, account: LocalAccount) -> UserConnection:
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
        await self._set_mapped(name, "True", reasons.USER_MAPPED, message)
        log.info(
            "UCloud user connected", extra={"userconnection": name, "local_user": account.name, "uid": account.uid}
        )
        return recorded

    async def _set_mapped(self, name: str, status: ConditionStatus, reason: str, message: str) -> None:
        current = await self.kube.get(UserConnection, self.namespace, name)
        if current is None:
            return
        conditions = set_condition(current.status.conditions, reasons.MAPPED, status, reason=reason, message=message)
        await self.kube.patch_status(
            UserConnection, self.namespace, name, {"conditions": [c.to_dict() for c in conditions]}
        )


def needs_mapping(connection: UserConnection, cluster: str) -> bool:
    if connection.spec.cluster != cluster or connection.spec.uid is not None:
        return False
    mapped = find_condition(connection.status.conditions, reasons.MAPPED)
    return mapped is None or mapped.status != "False"
