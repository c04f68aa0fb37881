"""Health and metrics endpoints that every component serves.

``/healthz`` says the process is alive, ``/readyz`` whether it can do its job
(each component passes its own check), ``/metrics`` is the Prometheus text
exposition of the process-wide registry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

ReadinessCheck = Callable[[], Awaitable[bool]]


async def _always_ready() -> bool:
    return True


def add_health_routes(
    app: web.Application,
    ready: ReadinessCheck = _always_ready,
    registry: CollectorRegistry = REGISTRY,
) -> None:
    """Add /healthz, /readyz and /metrics to an existing application."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if await ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready"}, status=503)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", make_aiohttp_handler(registry))


def health_app(ready: ReadinessCheck = _always_ready) -> web.Application:
    """A small application that serves only the health and metrics routes."""
    app = web.Application()
    add_health_routes(app, ready)
    return app


async def start_health_server(host: str, port: int, ready: ReadinessCheck = _always_ready) -> web.AppRunner:
    """Serve the health routes in the running loop; the caller cleans the runner up."""
    runner = web.AppRunner(health_app(ready), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
