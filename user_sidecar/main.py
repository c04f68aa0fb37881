"""``ucim-sidecar``: a user's own instance, run by hand (the bridge forks it instead)."""

from __future__ import annotations

from aiohttp import web

from ucim.common.logs import setup_logging
from ucim.user_sidecar.app import init_app
from ucim.user_sidecar.settings import SidecarSettings


def main() -> None:
    settings = SidecarSettings()
    setup_logging(settings.log_level, settings.log_format)
    app = init_app(settings)
    if settings.socket_path:
        web.run_app(
            app,
            path=settings.socket_path,
            shutdown_timeout=settings.shutdown_timeout_seconds,
            access_log=None,
            print=None,
        )
    else:
        web.run_app(
            app,
            host=settings.metrics_host,
            port=settings.metrics_port,
            shutdown_timeout=settings.shutdown_timeout_seconds,
            access_log=None,
            print=None,
        )


if __name__ == "__main__":
    main()
