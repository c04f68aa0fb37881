"""``ucim-gateway``: serve UCloud/Core's provider API."""

from __future__ import annotations

from aiohttp import web

from ucim.common.event_loops import new_relay_loop
from ucim.common.logs import setup_logging
from ucim.gateway.app import init_app
from ucim.gateway.settings import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    setup_logging(settings.log_level, settings.log_format)
    web.run_app(
        init_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=None,
        print=None,
        loop=new_relay_loop(),
    )


if __name__ == "__main__":
    main()
