"""The gateway's application factory."""

from __future__ import annotations

from aiohttp import web

from ucim.common.observability import add_health_routes
from ucim.gateway.settings import GatewaySettings

SETTINGS = web.AppKey("settings", GatewaySettings)


def init_app(settings: GatewaySettings) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    add_health_routes(app)
    return app
