"""``ucim-bridge``: the privileged half on the HPC frontend."""

from __future__ import annotations

import asyncio

from ucim.common.logs import setup_logging
from ucim.common.observability import start_health_server
from ucim.slurm_bridge.settings import BridgeSettings


async def serve(settings: BridgeSettings) -> None:
    runner = await start_health_server(settings.metrics_host, settings.metrics_port)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    settings = BridgeSettings()
    setup_logging(settings.log_level, settings.log_format)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
