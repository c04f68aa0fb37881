"""The gateway's application factory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from ucim.common.core_client import CoreClient
from ucim.common.informer import Informer
from ucim.common.kube import Kube
from ucim.common.observability import add_health_routes
from ucim.common.resources import Lease, UserConnection, UserInstance, cluster_selector
from ucim.gateway.auth import CoreVerifier, load_public_key, read_public_key
from ucim.gateway.connections import Connections
from ucim.gateway.drives import Drives
from ucim.gateway.errors import error_middleware
from ucim.gateway.files import setup_file_routes
from ucim.gateway.follow import setup_follow_routes
from ucim.gateway.instance_proxy import InstanceProxy
from ucim.gateway.instances import Instances
from ucim.gateway.interactive import setup_interactive_routes
from ucim.gateway.interactive_jobs import InteractiveJobs
from ucim.gateway.keys import (
    CONNECTIONS,
    CORE,
    DRIVES,
    INSTANCES,
    INTERACTIVE_JOBS,
    KUBE,
    PROXY,
    SETTINGS,
    VERIFIER,
)
from ucim.gateway.middlewares import auth_middleware, metrics_middleware
from ucim.gateway.provider import setup_provider_routes
from ucim.gateway.settings import GatewaySettings
from ucim.gateway.shell import setup_shell_routes
from ucim.gateway.sockets import setup_sockets
from ucim.gateway.transfers import setup_transfer_routes
from ucim.gateway.views import setup_routes
from ucim.gateway.web_apps import setup_web_routes


def core_verifier(settings: GatewaySettings) -> CoreVerifier:
    if settings.core_public_key is not None:
        key = load_public_key(settings.core_public_key.get_secret_value())
    elif settings.core_public_key_file is not None:
        key = read_public_key(settings.core_public_key_file)
    else:
        raise ValueError("set UCIM_GATEWAY_CORE_PUBLIC_KEY_FILE (or _CORE_PUBLIC_KEY): Core's public key is required")
    return CoreVerifier(key, settings.core_issuer, settings.jwt_leeway_seconds)


async def kubernetes(app: web.Application) -> AsyncIterator[None]:
    """The Kubernetes client lives as long as the application, and so do the watches of the cluster's
    bridges' Leases, UserInstances and UserConnections."""
    settings = app[SETTINGS]
    kube = await Kube.connect(settings.kubeconfig, component="gateway")
    use_kube(app, kube)
    instances, connections = app[INSTANCES], app[CONNECTIONS]
    selector = cluster_selector(settings.cluster)
    instances.leases = Informer(kube, Lease, settings.namespace, label_selector=selector)
    instances.informer = Informer(kube, UserInstance, settings.namespace, label_selector=selector)
    connections.informer = Informer(kube, UserConnection, settings.namespace, label_selector=selector)
    watches = [
        asyncio.create_task(informer.run(), name=f"{informer.kind.KIND}-watch")
        for informer in (instances.leases, instances.informer, connections.informer)
    ]
    yield
    for watch in watches:
        watch.cancel()
    await asyncio.gather(*watches, return_exceptions=True)
    await kube.close()


def use_kube(app: web.Application, kube: Kube) -> None:
    settings = app[SETTINGS]
    app[KUBE] = kube
    app[INSTANCES] = Instances(kube, settings.namespace, settings.cluster, settings.idle_timeout_seconds)
    app[CONNECTIONS] = Connections(kube, settings.namespace, settings.cluster, settings.connection_expire_after_ms)


async def interactive_jobs(app: web.Application) -> AsyncIterator[None]:
    """The jobs that may serve web and VNC interfaces, watched while the application runs (when it serves them)."""
    settings = app[SETTINGS]
    if not settings.vnc_enabled:  # no session key: no web or VNC session, nothing to look up
        yield
        return
    jobs = app[INTERACTIVE_JOBS] = InteractiveJobs(app[KUBE], settings.namespace, settings.cluster)
    watch = asyncio.create_task(jobs.watch(), name="interactive-job-watch")
    yield
    watch.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watch


async def core_client(app: web.Application) -> AsyncIterator[None]:
    """The client for Core (connections, home drives), when Core's URL and refresh token are configured."""
    settings = app[SETTINGS]
    if settings.core_url is None or settings.core_refresh_token is None:
        app[CORE] = app[DRIVES] = None
        yield
        return
    async with CoreClient(settings.core_url, settings.core_refresh_token) as core:
        app[CORE] = core
        app[DRIVES] = Drives(core, app[KUBE], settings.namespace, settings.provider_id)
        yield


async def instance_proxy(app: web.Application) -> AsyncIterator[None]:
    """The client sessions to the bridge ingress (forwards and tunnels) live as long as the application."""
    settings = app[SETTINGS]
    proxy = app[PROXY] = InstanceProxy(
        app[INSTANCES],
        settings.ingress_token,
        connect_timeout=settings.instance_connect_timeout_seconds,
        read_timeout=settings.instance_read_timeout_seconds,
    )
    yield
    await proxy.close()


def init_app(settings: GatewaySettings, kube: Kube | None = None) -> web.Application:
    """The gateway. Tests may pass a connected ``kube``; otherwise it connects at start-up."""
    app = web.Application(middlewares=[metrics_middleware, error_middleware, auth_middleware])
    app[SETTINGS] = settings
    app[VERIFIER] = core_verifier(settings)
    if kube is None:
        app.cleanup_ctx.append(kubernetes)
    else:
        use_kube(app, kube)
    app.cleanup_ctx.append(interactive_jobs)
    app.cleanup_ctx.append(core_client)
    app.cleanup_ctx.append(instance_proxy)
    base = f"/ucloud/{settings.provider_id}"
    setup_web_routes(app, base)  # first: every path of a job's web interface host is the job's
    add_health_routes(app)
    setup_routes(app, settings.provider_id)
    setup_file_routes(app, base)
    setup_transfer_routes(app, base)
    setup_shell_routes(app, base)
    setup_interactive_routes(app, base)
    setup_provider_routes(app, base)
    setup_follow_routes(app, settings.provider_id)
    setup_sockets(app)
    return app
