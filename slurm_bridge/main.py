"""``ucim-bridge``: the privileged half on the HPC frontend.

Start order matters:

1. settings, logging, the socket directory (0700 root);
2. **the fork server**, before any secret is read, with a filtered environment, so that
   no user instance can ever hold the ingress token or the Kubernetes credentials;
3. the ingress token (from its file), the Kubernetes client (its token);
4. the ingress, the UserInstance loop (and the measuring of the instances' memory), the Slurm
   monitor (and the walltime extensions, on its watch; the Slurm hook's listener when it is on),
   ``/healthz`` ``/readyz`` ``/metrics``.

SIGTERM or SIGINT stops it cleanly (exit 0): instances are marked not Ready, then they
stop with the fork server. If the fork server dies, the bridge exits 1 (systemd restarts
it; every instance is started again). Without an ingress token the bridge runs no
instances (it logs why and stays not ready) but still monitors Slurm.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from aiohttp import web
from pydantic import SecretStr

from ucim.common.event_loops import run_relay
from ucim.common.kube import Kube
from ucim.common.logs import setup_logging
from ucim.common.observability import start_health_server
from ucim.common.resources import ExtensionResult, TimeExtension, UCloudJob
from ucim.common.slurm import SlurmClient, SlurmConfig
from ucim.slurm_bridge.account_mapper import account_mapper
from ucim.slurm_bridge.audit import AuditListener, AuditLog, audit_trail
from ucim.slurm_bridge.connections import ConnectionMapper
from ucim.slurm_bridge.extensions import Recorder, TimeExtensions
from ucim.slurm_bridge.heartbeat import keep_lease
from ucim.slurm_bridge.hook_batches import HookBatches
from ucim.slurm_bridge.ingress import Routes, start_ingress
from ucim.slurm_bridge.instance_memory import measure_forever
from ucim.slurm_bridge.instances import InstanceManager
from ucim.slurm_bridge.mapping import Mapper
from ucim.slurm_bridge.monitor import SlurmMonitor
from ucim.slurm_bridge.munge import MungeDecoder
from ucim.slurm_bridge.poll_interval import PollInterval
from ucim.slurm_bridge.project_folders import ProjectFolders
from ucim.slurm_bridge.settings import BridgeSettings
from ucim.slurm_bridge.slurm_accounts import SlurmAccounts
from ucim.slurm_bridge.slurm_hook import HookListener, sender_uids
from ucim.slurm_bridge.spawner import ForkServer, ForkServerConfig, prepare_socket_dir
from ucim.slurm_bridge.unix_groups import unix_groups
from ucim.slurm_bridge.workspaces import WorkspaceController

log = logging.getLogger(__name__)


def fork_server_config(settings: BridgeSettings) -> ForkServerConfig:
    slurm_conf = str(settings.slurm_conf) if settings.slurm_conf else None
    return ForkServerConfig(
        socket_dir=str(settings.socket_dir),
        app_factory=settings.app_factory,
        app_options={
            "log_level": settings.log_level,
            "log_format": settings.log_format,
            "path": settings.instance_path,
            "lang": settings.instance_lang,
            "slurm_conf": slurm_conf,
            "audit_socket": str(settings.audit.socket_path) if settings.audit.enabled else None,
            **settings.sidecar,
        },
        min_uid=settings.mapping.min_uid,
        stop_grace_seconds=settings.stop_grace_seconds,
        path=settings.instance_path,
        lang=settings.instance_lang,
        slurm_conf=slurm_conf,
        log_level=settings.log_level,
        log_format=settings.log_format,
    )


def start_fork_server(settings: BridgeSettings) -> ForkServer:
    prepare_socket_dir(settings.socket_dir)
    # Only what an interpreter needs to find ucim; nothing else of our environment.
    extra = {key: os.environ[key] for key in ("PYTHONPATH",) if key in os.environ}
    return ForkServer.start(fork_server_config(settings), extra_env=extra)


def pacing(settings: BridgeSettings, *, hooked: bool) -> tuple[PollInterval, HookBatches | None]:
    """The poll's interval and the hook's batching; ``hooked``: the hook's listener runs, so the poll may slow down
    while nothing changes."""
    fastest, hook = settings.monitor_interval_seconds, settings.hook
    interval = PollInterval(fastest, settings.monitor_idle_interval_seconds if hooked else fastest)
    if not hooked:
        return interval, None
    return interval, HookBatches(hook.batch_seconds, hook.min_gap_seconds, hook.followup_seconds, hook.max_attempts)


async def watch_slurm(kube: Kube, settings: BridgeSettings, record: Recorder | None = None) -> None:
    """The Slurm monitor, the walltime extensions that share its watch of the cluster's UCloudJobs (``record``
    tells the audit trail of each), and the Slurm hook's listener when it is on (it closes its socket when it
    ends)."""
    listener = await open_hook_listener(settings) if settings.hook.enabled else None
    interval, hook = pacing(settings, hooked=listener is not None)
    slurm = SlurmClient(SlurmConfig(slurm_conf=settings.slurm_conf))
    extensions = TimeExtensions(kube, slurm, settings.namespace, record=record)
    monitor = SlurmMonitor.for_cluster(
        kube,
        slurm,
        namespace=settings.namespace,
        cluster=settings.cluster,
        watch_timeout_seconds=settings.watch_timeout_seconds,
        queue_interval=settings.monitor_queue_interval_seconds,
        on_event=extensions.on_event,
        interval=interval,
        hook=hook,
    )
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(monitor.run(), name="slurm-monitor")
        tasks.create_task(extensions.run(monitor.jobs), name="time-extensions")
        if listener is not None:
            listener.on_job = monitor.notify
            tasks.create_task(listener.run(), name="slurm-hook")


async def open_hook_listener(settings: BridgeSettings) -> HookListener | None:
    """The Slurm hook's listener on its socket; None (logged) when it cannot listen: the poll alone goes on."""
    hook = settings.hook
    try:
        listener = HookListener(MungeDecoder(hook.munge_socket), sender_uids(hook.senders), lambda *_: None)
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: listener, local_addr=(hook.host, hook.port))
    except (OSError, KeyError, ValueError) as error:
        log.error("the Slurm hook is not listened for (%s): job states come from the poll alone", error)  # noqa: TRY400
        return None
    log.info("listening for the Slurm hook", extra={"host": hook.host, "port": hook.port})
    return listener


async def ingress_for(settings: BridgeSettings, routes: Routes, token: SecretStr) -> web.AppRunner:
    return await start_ingress(
        routes,
        token,
        host=settings.ingress_host,
        port=settings.ingress_port,
        tls_cert=str(settings.ingress_tls_cert_file) if settings.ingress_tls_cert_file else None,
        tls_key=str(settings.ingress_tls_key_file) if settings.ingress_tls_key_file else None,
    )


def workspace_controller(
    kube: Kube, settings: BridgeSettings, connections: ConnectionMapper, instances: InstanceManager
) -> WorkspaceController:
    accounting = settings.accounting
    controller = WorkspaceController(
        kube=kube,
        namespace=settings.namespace,
        cluster=settings.cluster,
        connections=connections.connections,
        groups=unix_groups(accounting.groups),
        accounts=SlurmAccounts(SlurmConfig(slurm_conf=settings.slurm_conf)),
        names=account_mapper(accounting.accounts),
        folders=ProjectFolders(pattern) if (pattern := settings.project_folder_pattern) else None,
        usage_interval_seconds=accounting.usage_interval_seconds,
        storage_interval_seconds=accounting.storage_interval_seconds,
        resync_seconds=accounting.accounts.resync_seconds,
        watch_timeout_seconds=settings.watch_timeout_seconds,
    )
    connections.listeners.append(controller.on_connection)
    controller.on_groups_changed = instances.refresh_groups
    return controller


def audited_extensions(audit: AuditLog, manager: InstanceManager) -> Recorder:
    """Each walltime extension the bridge answered, as a line of the audit trail for the job's owner."""

    def record(job: UCloudJob, extension: TimeExtension, result: ExtensionResult, message: str) -> None:
        who = manager.identity_for(job.spec.owner)
        if who is None:  # the owner's instance was never mapped here: nobody to name as the actor
            log.warning(
                "walltime extension not audited: its owner is not mapped", extra={"ucloudjob": job.metadata.name}
            )
            return
        applied = result == "Applied"
        audit.write(who, {
            "action": "jobs.extend", "targets": [f"job:{job.spec.job_id}", f"slurm:{job.status.slurm_job_id}"],
            "minutes": extension.add_minutes, "result": "ok" if applied else "error",
            "status": 200 if applied else 400, "why": None if applied else message,
        })  # fmt: skip

    return record


def instance_tasks(
    kube: Kube,
    settings: BridgeSettings,
    connections: ConnectionMapper,
    manager: InstanceManager,
    trail: AuditListener | None,
) -> dict[str, Coroutine[Any, Any, None]]:
    """What runs beside the instances: their loop, the connections, accounting and the audit trail if on."""
    tasks = {
        "instances": manager.run(),
        "instance-memory": measure_forever(manager.serving_pids, settings.memory_interval_seconds),
        "connections": connections.run(),
    }
    if settings.accounting.enabled:
        tasks["workspaces"] = workspace_controller(kube, settings, connections, manager).run()
    if trail is not None:
        tasks["audit"] = trail.run()
    return tasks


async def serve(settings: BridgeSettings, fork_server: ForkServer | None, token: SecretStr | None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    kube = await Kube.connect(settings.kubeconfig, component="bridge")
    tasks: list[asyncio.Task[None]] = []
    manager: InstanceManager | None = None
    record: Recorder | None = None
    ingress = None

    def run(name: str, coroutine: Coroutine[Any, Any, None]) -> None:
        tasks.append(loop.create_task(coroutine, name=name))

    if fork_server is not None and token is not None:
        routes = Routes()
        mapper = Mapper(settings.mapping)
        connections = ConnectionMapper(
            kube=kube,
            namespace=settings.namespace,
            cluster=settings.cluster,
            mapper=mapper,
            watch_timeout_seconds=settings.watch_timeout_seconds,
        )
        manager = InstanceManager(
            kube=kube,
            settings=settings,
            mapper=mapper,
            fork_server=fork_server,
            routes=routes,
            connections=connections,
        )
        connections.instances = manager.informer
        fork_server.attach(manager.on_child_exit)
        ingress = await ingress_for(settings, routes, token)
        # Opened here, before serving: a file or socket the bridge cannot make stops it at start.
        trail = audit_trail(settings.audit, manager.identity_of) if settings.audit.enabled else None
        record = audited_extensions(trail.audit, manager) if trail is not None else None
        for name, coroutine in instance_tasks(kube, settings, connections, manager, trail).items():
            run(name, coroutine)
    else:
        log.error("no ingress token configured (UCIM_BRIDGE_INGRESS_TOKEN_FILE): user instances are disabled")
    run(
        "heartbeat",
        keep_lease(
            kube,
            settings.namespace,
            bridge=settings.bridge_name,
            cluster=settings.cluster,
            duration_seconds=settings.lease_duration_seconds,
        ),
    )
    if settings.monitor_enabled:
        run("slurm-monitor", watch_slurm(kube, settings, record))

    async def ready() -> bool:
        return manager is not None and manager.watching and not (fork_server is None or _gone(fork_server))

    health = await start_health_server(settings.metrics_host, settings.metrics_port, ready)
    log.info("bridge started", extra={"cluster": settings.cluster, "namespace": settings.namespace})
    waits = [loop.create_task(stop.wait(), name="signal"), *tasks]
    if fork_server is not None and fork_server.gone is not None:
        waits.append(loop.create_task(fork_server.gone.wait(), name="fork-server"))
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        failed = not stop.is_set()
        if failed:
            log.error("bridge stopping: %s ended", ", ".join(t.get_name() for t in done))
    finally:
        # The watch first, so that no new worker starts while the others stop.
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        if manager is not None:
            await manager.shutdown()
        if ingress is not None:
            await ingress.cleanup()
        if fork_server is not None:
            await fork_server.close()
        await kube.close()
        await health.cleanup()
    return 1 if failed else 0


def _gone(fork_server: ForkServer) -> bool:
    return fork_server.gone is not None and fork_server.gone.is_set()


def main() -> None:
    settings = BridgeSettings()
    setup_logging(settings.log_level, settings.log_format)
    fork_server = start_fork_server(settings) if settings.ingress_configured else None
    token = None
    try:
        # Secrets only now: the fork server, and so every instance, never had them.
        if fork_server is not None:
            token = settings.read_ingress_token()
        code = run_relay(serve(settings, fork_server, token))
    except BaseException:
        if fork_server is not None:
            with contextlib.suppress(Exception):
                fork_server.kill()
        raise
    sys.exit(code)


if __name__ == "__main__":
    main()
