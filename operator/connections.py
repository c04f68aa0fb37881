"""Telling Core when a user's connection ends: ``clearConnection``, once per end, recorded in the status.

A UserConnection ends when its ``spec.expiresAt`` passes (the gateway sets it from
``connection_expire_after_ms`` at each connect) or when the user unlinks (the gateway sets
``Connected=False Unlinked`` and ``expiresAt`` to now). Core must then hear that the user is
no longer connected, as the anchor tells it (``POST
/api/providers/integration/control/clearConnection``), so that UCloud offers the Connect
button again. The bridge stops the user's instance; the gateway does not connect the user
again by itself, only an explicit ``integration/connect`` does.

The operator is the one to tell Core: it holds the provider's Core client and already
reports to Core what happens here, while the gateway only answers Core's calls and has
nothing running when an expiry passes between two of them.

It watches its cluster's connections (one informer) and keeps one timer per connection, set
at its end (``loop.call_later``, as the bridge does to stop the instance), never a scan on a
period. When a timer fires, the connection is read afresh (a user who connected again since
has a new expiry, and nothing is cleared), Core is told, and ``status.cleared`` (the
operator's) records the ``expiresAt`` that clear answered. That record makes restarts safe:
a starting operator lists the connections, meets at once the ends it missed (a 0 s timer)
and skips those already recorded. A clear Core accepted whose record could not be written
yet is not sent again by this process; after a restart it would be (clearConnection is
idempotent at Core), never lost. Core being down is retried with the one backoff; a 4xx is
Core's final word: logged, and tried again only when the connection changes or the
operator restarts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Final

from ucim.common import reasons
from ucim.common.conditions import find_condition
from ucim.common.connections import end_reason
from ucim.common.core_client import CoreClient, CoreRejectedError
from ucim.common.informer import Change, Informer
from ucim.common.kube import Kube
from ucim.common.resources import ConnectionCleared, UserConnection, cluster_selector
from ucim.common.retry import retrying
from ucim.common.times import now_utc
from ucim.operator import metrics

log = logging.getLogger(__name__)

FIRST_RETRY_SECONDS: Final = 1.0
MAX_RETRY_SECONDS: Final = 60.0


def clear_due_at(connection: UserConnection) -> datetime | None:
    """When Core is to hear that the connection ended: its ``expiresAt``.

    None for a connection that never was connected (nothing to clear), that does not expire,
    or whose end Core has heard of already (``status.cleared`` answered this ``expiresAt``).
    """
    end = connection.spec.expires_at
    if end is None or find_condition(connection.status.conditions, reasons.CONNECTED) is None:
        return None
    cleared = connection.status.cleared
    return None if cleared is not None and cleared.expires_at == end else end


def _worth_retrying(error: BaseException) -> bool:
    """Core down, the apiserver away: yes. Core's 4xx (and a cancellation): no."""
    return isinstance(error, Exception) and not isinstance(error, CoreRejectedError)


class ConnectionClearer:
    def __init__(
        self,
        core: CoreClient,
        kube: Kube,
        *,
        namespace: str,
        cluster: str,
        clock: Callable[[], datetime] = now_utc,
        first_retry_seconds: float = FIRST_RETRY_SECONDS,
        watch_timeout_seconds: int = 300,
    ) -> None:
        self.core, self.kube, self.namespace, self.clock = core, kube, namespace, clock
        self.first_retry_seconds = first_retry_seconds
        self.connections = Informer(
            kube,
            UserConnection,
            namespace,
            label_selector=cluster_selector(cluster),
            on_event=self.on_event,
            watch_timeout_seconds=watch_timeout_seconds,
        )
        # Connection name → (the end its timer waits for, the timer); a fired timer stays until the end changes.
        self._timers: dict[str, tuple[datetime, asyncio.TimerHandle]] = {}
        # Ends Core accepted whose record is not written yet: not sent again while the record is retried.
        self._told: dict[str, datetime] = {}
        self._busy: set[str] = set()
        # Timers that fired while their connection's clear was running: it runs again after.
        self._again: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Watch the cluster's connections until cancelled; then no timer or clear is left running."""
        try:
            await self.connections.run()
        finally:
            for _, timer in self._timers.values():
                timer.cancel()
            for task in self._tasks:
                task.cancel()

    def on_event(self, change: Change, connection: UserConnection) -> None:
        """Set the connection's timer at its end, or drop it (connected again, cleared, deleted)."""
        name = connection.metadata.name
        end = None if change == "DELETED" else clear_due_at(connection)
        known = self._timers.get(name)
        if known is not None and known[0] == end:
            return
        if known is not None:
            known[1].cancel()
            del self._timers[name]
        if change == "DELETED":
            self._told.pop(name, None)
        if end is not None:
            self._arm(name, end)

    def _arm(self, name: str, end: datetime) -> None:
        delay = max(0.0, (end - self.clock()).total_seconds())
        self._timers[name] = (end, asyncio.get_running_loop().call_later(delay, self._fire, name, end))

    def _fire(self, name: str, end: datetime) -> None:
        if end > self.clock():
            self._arm(name, end)  # the loop's clock ran ahead of the wall clock: not yet
        elif name in self._busy:
            self._again.add(name)
        else:
            self._busy.add(name)
            task = asyncio.get_running_loop().create_task(self._clear_retried(name), name=f"clear-{name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _clear_retried(self, name: str) -> None:
        try:
            what = f"clearing UserConnection {name} at Core"
            async for attempt in retrying(
                first=self.first_retry_seconds, cap=MAX_RETRY_SECONDS, log=log, what=what, retry_on=_worth_retrying
            ):
                with attempt:
                    await self.clear(name)
        except CoreRejectedError as refusal:
            log.error("Core refused to clear the connection: %s", refusal.why, extra={"userconnection": name})  # noqa: TRY400 - Core's words say it all
        finally:
            self._busy.discard(name)
            if name in self._again:
                self._again.discard(name)
                self._fire(name, self.clock())

    async def clear(self, name: str) -> bool:
        """Tell Core that the connection ``name`` ended, and record it; False if it has not, or Core knows."""
        # Read afresh, not from the cache: a user who has just connected again must not be cleared.
        connection = await self.kube.get(UserConnection, self.namespace, name)
        end = None if connection is None else clear_due_at(connection)
        if connection is None or end is None or end > self.clock():
            return False
        reason = end_reason(connection, end) or reasons.EXPIRED
        username = connection.spec.ucloud_username
        if self._told.get(name) != end:
            await self.core.clear_connection(username)
            self._told[name] = end
            metrics.CONNECTIONS_CLEARED.labels(reason=reason.lower()).inc()
        cleared = ConnectionCleared(expires_at=end, cleared_at=self.clock(), reason=reason)
        await self.kube.patch_status(UserConnection, self.namespace, name, {"cleared": cleared.to_dict()})
        self._told.pop(name, None)
        log.info("connection cleared at Core", extra={"userconnection": name, "ucloud_user": username, "why": reason})
        return True
