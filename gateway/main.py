"""``ucim-gateway``: serve UCloud/Core's provider API."""

from __future__ import annotations

import logging

from aiohttp import web

from ucim.common.event_loops import new_relay_loop
from ucim.common.logs import setup_logging
from ucim.gateway.app import init_app
from ucim.gateway.settings import GatewaySettings

log = logging.getLogger("ucim.gateway.main")


def main() -> None:
    settings = GatewaySettings()
    setup_logging(settings.log_level, settings.log_format)
    app = init_app(settings)

    async def started(_: web.Application) -> None:
        log.info(
            "gateway serving",
            extra={"host": settings.host, "port": settings.port, "provider": settings.provider_id,
                   "public_url": settings.public_url, "web_suffix": settings.web_suffix,
                   "vnc": settings.vnc_enabled},
        )  # fmt: skip

    app.on_startup.append(started)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        access_log=None,
        print=None,
        loop=new_relay_loop(),
    )


if __name__ == "__main__":
    main()
