"""The UserInstance loop: map, spawn, watch over and stop this cluster's user instances.

The bridge watches the UserInstances of its namespace whose ``spec.cluster`` is its own
and runs one small worker per instance. A worker reads top to bottom:

1. **Mapped?** Without ``spec.uid`` it takes the account of the user's UserConnection
   (``connections.py``; the mapping policy runs there, or here when the user has no
   connection yet) and writes ``spec.localUser``/``spec.uid`` once. A refusal is ``Mapped=False``/``Ready=False``,
   reason ``MappingRefused``, the message says why; it is tried again only when the
   ``ucim.io/requested-at`` annotation changes.
2. **Running?** If its child runs: stop it when it was idle (no ingress request) for
   ``spec.idleTimeoutSeconds`` (``Ready=False IdleStopped``); else keep ``status`` right
   and write ``lastActivityAt`` at most every ``activity_write_interval_seconds``.
3. **Not running:** start it, unless it was stopped for idleness (or refused) and
   ``requested-at`` has not changed since, or it is waiting out a restart backoff. The
   account is checked again (it may have been locked since), the fork server forks,
   and the instance is Ready once it has answered ``/healthz``:
   ``Ready=True InstanceServing``, ``endpoint``, ``pid``, ``startedAt``,
   ``spawnDurationSeconds``, ``bridge``.

A child that exits unasked is ``Ready=False InstanceExited`` and is started again after
a backoff (``restart_backoff_seconds``, doubling up to ``restart_backoff_max_seconds``;
reset when it had run ``stable_after_seconds``). A deleted UserInstance's child is stopped.

Bridge restarts: instances do not outlive their bridge (the fork server stops them when
the bridge goes away), so a new bridge **restarts every instance cleanly**; there is
nothing to adopt. On a graceful stop the bridge first marks its running instances
``Ready=False`` so that nobody routes to them.

Watch: :class:`ucim.common.informer.Informer` lists this cluster's UserInstances (label
selector ``ucim.io/cluster=<cluster>``; a list after a broken watch also finds those deleted
meanwhile), then watches from the list's version. A reconcile that fails (the apiserver away)
is tried again with the one backoff of :mod:`ucim.common.retry`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import Counter, Gauge, Histogram

from ucim.common import reasons
from ucim.common.conditions import ConditionUpdate, find_condition, set_condition
from ucim.common.informer import Change, Informer, older
from ucim.common.kube import ConflictError, InvalidError, Kube, NotFoundError
from ucim.common.resources import UserInstance, cluster_selector
from ucim.common.retry import delay_after
from ucim.common.times import rfc3339
from ucim.slurm_bridge.audit import Identity
from ucim.slurm_bridge.connections import ConnectionMapper
from ucim.slurm_bridge.ingress import Routes
from ucim.slurm_bridge.mapping import LocalAccount, Mapper, MappingRefusedError
from ucim.slurm_bridge.settings import BridgeSettings
from ucim.slurm_bridge.spawner import ForkServer, SpawnError, SpawnRequest

log = logging.getLogger(__name__)

SPAWNS = Counter("ucim_instance_spawns", "Instance starts, by result (ok, failed, refused).", ["result"])
SPAWN_SECONDS = Histogram(
    "ucim_instance_spawn_duration_seconds",
    "From the spawn request to the instance's first answer.",
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10),
)
RUNNING = Gauge("ucim_instances_running", "User instances running on this bridge.")
EXITS = Counter("ucim_instance_exits", "Instances that exited without being asked to.")

# A reconcile that failed (not a refusal: the apiserver away) is tried again after this, doubling.
_ERROR_FIRST_RETRY_SECONDS = 0.5
# An instance whose user's groups changed restarts at its first moment without a request, checked this often,
# and at the latest this long after the change (a steady stream of requests would otherwise keep the old groups).
GROUPS_RESTART_CHECK_SECONDS = 1.0
GROUPS_RESTART_MAX_SECONDS = 600.0
_ERROR_MAX_RETRY_SECONDS = 30.0


def socket_path(socket_dir: Path, namespace: str, name: str) -> str:
    """A short, fixed-length socket name (unix socket paths are limited to 107 bytes)."""
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:32]
    return str(socket_dir / f"{digest}.sock")


@dataclass
class Instance:
    """What the bridge knows about one UserInstance beyond the object itself."""

    name: str
    obj: UserInstance
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    deleted: bool = False
    pid: int | None = None
    serving: bool = False
    started: float = 0.0  # monotonic
    stopping: bool = False
    exit_status: int | None = None
    failures: int = 0
    errors: int = 0  # reconciles in a row that raised
    retry_at: float = 0.0  # monotonic; no start before this
    # The requested-at value when it was stopped for idleness / refused: only a new one restarts it.
    parked_at_request: str | None = None
    parked: bool = False
    activity_written_at: float = 0.0  # monotonic time of the last lastActivityAt write
    activity_written: datetime | None = None
    # When its user's Unix groups changed (monotonic): a process has the groups it started with, so it restarts.
    groups_changed_at: float | None = None

    @property
    def requested_at(self) -> str | None:
        return (self.obj.metadata.annotations or {}).get(reasons.REQUESTED_AT_ANNOTATION)


class InstanceManager:
    """Runs this bridge's UserInstances; see the module docstring."""

    def __init__(
        self,
        *,
        kube: Kube,
        settings: BridgeSettings,
        mapper: Mapper,
        fork_server: ForkServer,
        routes: Routes,
        connections: ConnectionMapper | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.namespace = settings.namespace
        self.mapper = mapper
        self.fork_server = fork_server
        self.routes = routes
        self.connections = connections
        self.clock = clock
        self.instances: dict[str, Instance] = {}
        self._by_pid: dict[int, Instance] = {}
        self._early_exits: dict[int, int] = {}
        self.informer = Informer(
            kube,
            UserInstance,
            self.namespace,
            label_selector=cluster_selector(settings.cluster),
            on_event=self.observe,
            watch_timeout_seconds=settings.watch_timeout_seconds,
        )

    # ----------------------------------------------------------------- the watch

    async def run(self) -> None:
        """List and watch until cancelled."""
        await self.informer.run()

    @property
    def watching(self) -> bool:
        """The watch is current: the bridge knows every instance it should run."""
        return self.informer.synced.is_set()

    def observe(self, kind: Change, obj: UserInstance) -> None:
        """One watch event: hand the object to its worker (starting one if needed)."""
        name = obj.metadata.name
        instance = self.instances.get(name)
        if kind == "DELETED":
            if instance is not None:
                instance.deleted = True
                instance.wake.set()
            return
        if instance is not None and instance.deleted and obj.metadata.uid != instance.obj.metadata.uid:
            instance = None  # deleted and created again: the old worker stops the old child
        if instance is None:
            instance = self.instances[name] = Instance(name=name, obj=obj)
            self.routes.ensure(name)
            instance.task = asyncio.get_running_loop().create_task(self._worker(instance), name=f"instance-{name}")
        elif not older(obj, instance.obj):
            instance.obj = obj
        instance.wake.set()

    def refresh_groups(self, local_users: Collection[str]) -> None:
        """Restart the running instances of these users to give them their new Unix groups (see _running)."""
        for instance in self.instances.values():
            if instance.pid is not None and instance.obj.spec.local_user in local_users:
                instance.groups_changed_at = instance.groups_changed_at or self.clock()
                instance.wake.set()

    def on_child_exit(self, pid: int, status: int, cpu_seconds: float = 0.0) -> None:
        """The fork server reaped a child (called from its reader)."""
        instance = self._by_pid.pop(pid, None)
        if instance is None:
            self._early_exits[pid] = status  # before spawn() returned: the worker looks here
            return
        instance.exit_status = status
        instance.wake.set()

    # ----------------------------------------------------------------- one instance

    async def _worker(self, instance: Instance) -> None:
        while True:
            instance.wake.clear()
            if instance.deleted:
                await self._forget(instance)
                return
            try:
                delay = await self.reconcile(instance)
                instance.errors = 0
            except asyncio.CancelledError:
                raise
            except NotFoundError:
                delay = None  # deleted meanwhile: the watch says so next
            except Exception:
                instance.errors += 1
                delay = delay_after(instance.errors, first=_ERROR_FIRST_RETRY_SECONDS, cap=_ERROR_MAX_RETRY_SECONDS)
                log.exception(
                    "reconciling UserInstance failed", extra={"userinstance": instance.name, "retry_in": delay}
                )
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # coincides with the event being set, and the worker would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await instance.wake.wait()

    async def reconcile(self, instance: Instance) -> float | None:
        """One pass; seconds until the next timed check (None: wait for a change)."""
        if instance.exit_status is not None:
            await self._exited(instance)
        if instance.obj.spec.uid is None:
            mapped = await self._map(instance)
            if not mapped:
                return None
        if instance.pid is not None:
            return await self._running(instance)
        if instance.parked and instance.requested_at == instance.parked_at_request:
            return None
        if instance.requested_at != instance.parked_at_request:
            # Someone asks for it again: no waiting out a backoff either.
            instance.retry_at = 0.0
        instance.parked = False
        now = self.clock()
        if now < instance.retry_at:
            return instance.retry_at - now
        return await self._start(instance)

    async def _map(self, instance: Instance) -> bool:
        if instance.parked and instance.requested_at == instance.parked_at_request:
            return False
        obj = instance.obj
        try:
            if self.connections is not None:
                account = await self.connections.account_for(obj.spec.ucloud_username)
            else:
                account = await self.mapper.map(obj.spec.ucloud_username)
        except MappingRefusedError as refusal:
            await self._refuse(instance, str(refusal))
            return False
        try:
            instance.obj = await self.kube.patch(
                UserInstance,
                self.namespace,
                instance.name,
                {"spec": {"localUser": account.name, "uid": account.uid}},
            )
        except (ConflictError, InvalidError):
            # Mapped by someone else meanwhile (the CRD keeps it from changing): use theirs.
            fresh = await self.kube.get(UserInstance, self.namespace, instance.name)
            if fresh is None or fresh.spec.uid is None:
                raise
            instance.obj = fresh
        log.info(
            "UCloud user mapped",
            extra={"userinstance": instance.name, "local_user": account.name, "uid": account.uid},
        )
        return True

    async def _refuse(self, instance: Instance, why: str) -> None:
        SPAWNS.labels("refused").inc()
        instance.parked, instance.parked_at_request = True, instance.requested_at
        log.warning("user refused", extra={"userinstance": instance.name, "why": why})
        await self._write_status(
            instance,
            [
                (reasons.MAPPED, "False", reasons.MAPPING_REFUSED, why),
                (reasons.READY, "False", reasons.MAPPING_REFUSED, why),
            ],
        )

    async def _start(self, instance: Instance) -> float | None:
        spec = instance.obj.spec
        if spec.uid is None:
            return None  # not mapped: reconcile maps first
        try:
            if self.connections is not None:
                await self.connections.ensure_active(spec.ucloud_username)  # an unlinked user starts nothing
            account = self.mapper.resolve(spec.uid, spec.local_user)
        except MappingRefusedError as refusal:
            await self._refuse(instance, str(refusal))
            return None
        path = socket_path(self.settings.socket_dir, self.namespace, instance.name)
        started = time.perf_counter()
        try:
            pid = await self.fork_server.spawn(_spawn_request(f"{self.namespace}/{instance.name}", path, account))
        except SpawnError as failure:
            return await self._spawn_failed(instance, account, f"the instance could not be started: {failure}")
        instance.pid, instance.started, instance.stopping = pid, self.clock(), False
        self._by_pid[pid] = instance
        if pid in self._early_exits:
            self.on_child_exit(pid, self._early_exits.pop(pid))
        session = self.routes.open(instance.name, path)
        try:
            await _first_answer(session, self.settings.spawn_timeout_seconds)
        except (aiohttp.ClientError, TimeoutError) as failure:
            await self.routes.close(instance.name)
            if instance.exit_status is None:
                instance.stopping = True  # its exit event arrives later and is expected
                await self.fork_server.stop(pid)
            else:
                instance.pid, instance.exit_status = None, None
            return await self._spawn_failed(instance, account, f"the instance did not answer: {failure or 'timeout'}")
        duration = time.perf_counter() - started
        SPAWNS.labels("ok").inc()
        SPAWN_SECONDS.observe(duration)
        instance.serving = True
        self._count_running()
        now = datetime.now(UTC)
        instance.activity_written, instance.activity_written_at = now, self.clock()
        log.info(
            "instance serving",
            extra={"userinstance": instance.name, "pid": pid, "uid": account.uid, "seconds": round(duration, 4)},
        )
        await self._write_status(
            instance,
            [
                _mapped(account),
                (reasons.READY, "True", reasons.INSTANCE_SERVING, f"serving on {self.settings.bridge_name}"),
            ],
            endpoint=self.settings.endpoint(instance.name),
            bridge=self.settings.bridge_name,
            pid=pid,
            startedAt=rfc3339(now),
            lastActivityAt=rfc3339(now),
            spawnDurationSeconds=round(duration, 6),
        )
        return self._next_check(instance)

    async def _spawn_failed(self, instance: Instance, account: LocalAccount, why: str) -> float:
        SPAWNS.labels("failed").inc()
        delay = self._backoff(instance)
        log.warning("instance did not start", extra={"userinstance": instance.name, "why": why, "retry_in": delay})
        await self._write_status(
            instance,
            [_mapped(account), (reasons.READY, "False", reasons.SPAWN_FAILED, f"{why}; retrying in {delay:g} s")],
        )
        return delay

    def _backoff(self, instance: Instance) -> float:
        instance.failures += 1
        delay = delay_after(
            instance.failures,
            first=self.settings.restart_backoff_seconds,
            cap=self.settings.restart_backoff_max_seconds,
        )
        instance.retry_at = self.clock() + delay
        instance.parked_at_request = instance.requested_at
        return delay

    async def _exited(self, instance: Instance) -> None:
        status, instance.exit_status = instance.exit_status, None
        pid, instance.pid = instance.pid, None
        instance.serving = False
        self._count_running()
        await self.routes.close(instance.name)
        ran = self.clock() - instance.started
        instance.started = 0.0
        if instance.stopping:
            instance.stopping = False
            return
        EXITS.inc()
        if ran >= self.settings.stable_after_seconds:
            instance.failures = 0
        delay = self._backoff(instance)
        why = f"instance (pid {pid}) exited with status {status}; restarting in {delay:g} s"
        log.warning("instance exited", extra={"userinstance": instance.name, "pid": pid, "status": status})
        await self._write_status(instance, [(reasons.READY, "False", reasons.INSTANCE_EXITED, why)], pid=None)

    async def _running(self, instance: Instance) -> float | None:
        route = self.routes.ensure(instance.name)
        timeout = instance.obj.spec.idle_timeout_seconds
        now = self.clock()
        if instance.stopping:
            return None  # its exit is on the way
        changed = instance.groups_changed_at
        if changed is not None and (route.in_flight == 0 or now - changed >= GROUPS_RESTART_MAX_SECONDS):
            # Between two requests (or, under steady load, at most GROUPS_RESTART_MAX_SECONDS later): the
            # instance stops and starts again at once (its exit is expected), with the groups its user has now.
            instance.groups_changed_at = None
            log.info("instance restarted: its user's Unix groups changed", extra={"userinstance": instance.name})
            await self._stop(instance)
            return None
        if timeout > 0 and route.in_flight == 0 and now - route.last_activity >= timeout:
            await self._stop(instance)
            instance.parked, instance.parked_at_request = True, instance.requested_at
            await self._write_status(
                instance,
                [(reasons.READY, "False", reasons.IDLE_STOPPED, f"stopped after {timeout} s without a request")],
                pid=None,
            )
            log.info("instance stopped: idle", extra={"userinstance": instance.name})
            return None
        ready = find_condition(instance.obj.status.conditions, reasons.READY)
        if ready is None or ready.status != "True" or instance.obj.status.pid != instance.pid:
            # Status lost or overwritten (e.g. by an earlier bridge): say again that it serves.
            await self._write_status(
                instance,
                [(reasons.READY, "True", reasons.INSTANCE_SERVING, f"serving on {self.settings.bridge_name}")],
                endpoint=self.settings.endpoint(instance.name),
                bridge=self.settings.bridge_name,
                pid=instance.pid,
            )
        interval = self.settings.activity_write_interval_seconds
        written = instance.activity_written
        if (written is None or route.last_activity_at > written) and now - instance.activity_written_at >= interval:
            instance.activity_written, instance.activity_written_at = route.last_activity_at, now
            await self._write_status(instance, [], lastActivityAt=rfc3339(route.last_activity_at))
        return self._next_check(instance)

    def _next_check(self, instance: Instance) -> float | None:
        route = self.routes.ensure(instance.name)
        now = self.clock()
        checks = [GROUPS_RESTART_CHECK_SECONDS] if instance.groups_changed_at is not None else []
        timeout = instance.obj.spec.idle_timeout_seconds
        if timeout > 0:
            checks.append(route.last_activity + timeout - now)
        if instance.activity_written is None or route.last_activity_at > instance.activity_written:
            checks.append(instance.activity_written_at + self.settings.activity_write_interval_seconds - now)
        else:
            # Activity may come at any time; look again in one interval.
            checks.append(self.settings.activity_write_interval_seconds)
        return max(0.05, min(checks))

    async def _stop(self, instance: Instance) -> None:
        await self.routes.close(instance.name)
        if instance.pid is not None and not instance.stopping:
            instance.stopping = True
            await self.fork_server.stop(instance.pid)

    async def _forget(self, instance: Instance) -> None:
        """The UserInstance is gone: stop its child, drop its route."""
        if instance.pid is not None and not instance.stopping:
            instance.stopping = True
            await self.fork_server.stop(instance.pid)
        if self.instances.get(instance.name) is instance:
            del self.instances[instance.name]
            await self.routes.remove(instance.name)
        self._count_running()
        log.info("UserInstance deleted: instance stopped", extra={"userinstance": instance.name})

    async def _write_status(self, instance: Instance, conditions: list[ConditionUpdate], **fields: Any) -> None:
        obj = instance.obj
        generation = obj.metadata.generation
        current = obj.status.conditions
        for update in conditions:
            current = set_condition(current, update, observed_generation=generation)
        patch: dict[str, Any] = {**fields, "observedGeneration": generation}
        if conditions:
            patch["conditions"] = [c.to_dict() for c in current]
        instance.obj = await self.kube.patch_status(UserInstance, self.namespace, instance.name, patch)

    # ----------------------------------------------------------------- shutdown

    async def shutdown(self, wait_seconds: float = 5.0) -> None:
        """Stop the workers; mark running instances not Ready (their children stop with the fork server)."""
        workers = [i.task for i in self.instances.values() if i.task is not None]
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        running = [i for i in self.instances.values() if i.pid is not None]
        why = f"bridge {self.settings.bridge_name} is stopping"
        writes = [self._write_status(i, [(reasons.READY, "False", reasons.INSTANCE_EXITED, why)]) for i in running]
        if writes:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*writes, return_exceptions=True), wait_seconds)
        for instance in running:
            instance.serving = False
        self._count_running()
        await self.routes.close_all()

    def _count_running(self) -> None:
        RUNNING.set(sum(1 for i in self.instances.values() if i.serving))

    def identity_of(self, pid: int) -> Identity | None:
        """Who the instance whose process is ``pid`` acts for (the audit socket's check), or None.

        Until its exit is reported: a stopping instance's last answers (in-flight requests, sessions ending) are
        still its own.
        """
        return self._identity(self._by_pid.get(pid), pid)

    def identity_for(self, ucloud_username: str) -> Identity | None:
        """Who the bridge acts for when it acts for ``ucloud_username`` itself (a walltime extension): the user's
        mapped instance, with the bridge's own pid (the bridge did it, not the instance)."""
        return self._identity(
            self.instances.get(UserInstance.name_for(ucloud_username, self.settings.cluster)), os.getpid()
        )

    def _identity(self, instance: Instance | None, pid: int) -> Identity | None:
        """``instance``'s mapped account as the audit trail names it, acting through ``pid``; None if unmapped."""
        spec = instance.obj.spec if instance is not None else None
        if instance is None or spec is None or spec.uid is None or spec.local_user is None:
            return None
        return Identity(
            instance=f"{self.namespace}/{instance.name}",
            ucloud_user=spec.ucloud_username,
            local_user=spec.local_user,
            uid=spec.uid,
            pid=pid,
        )

    def serving_pids(self) -> list[int]:
        """The processes of the instances that serve now."""
        return [i.pid for i in self.instances.values() if i.serving and i.pid is not None]


def _mapped(account: LocalAccount) -> ConditionUpdate:
    return reasons.MAPPED, "True", reasons.USER_MAPPED, f"runs as local user {account.name} ({account.uid})"


def _spawn_request(key: str, path: str, account: LocalAccount) -> SpawnRequest:
    return SpawnRequest(
        key=key,
        socket_path=path,
        user=account.name,
        uid=account.uid,
        gid=account.gid,
        groups=list(account.groups),
        home=account.home,
        shell=account.login_shell,
    )


async def _first_answer(session: aiohttp.ClientSession, wait_seconds: float) -> None:
    """Wait for the instance's first answer: the socket listens before the child runs, so no retries."""
    async with asyncio.timeout(wait_seconds), session.get("http://instance/healthz") as response:
        response.raise_for_status()
