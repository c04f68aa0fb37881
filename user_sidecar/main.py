"""``ucim-sidecar``: a user's own instance."""

from __future__ import annotations

from aiohttp import web

from ucim.common.logs import setup_logging
from ucim.common.observability import health_app
from ucim.user_sidecar.settings import SidecarSettings


def main() -> None:
    settings = SidecarSettings()
    setup_logging(settings.log_level, settings.log_format)
    app = health_app()
    if settings.socket_path:
        web.run_app(app, path=settings.socket_path, access_log=None, print=None)
    else:
        web.run_app(app, host=settings.metrics_host, port=settings.metrics_port, access_log=None, print=None)


if __name__ == "__main__":
    main()
