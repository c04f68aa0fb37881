"""kopf handlers of the operator.

All kopf settings are fixed here, once, in the start-up handler: changing the
finalizer or the annotation prefix later would orphan existing objects.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
from aiohttp import web

from ucim.common.observability import start_health_server
from ucim.common.settings import API_GROUP
from ucim.operator.settings import OperatorSettings

FINALIZER = f"{API_GROUP}/finalizer"
_HEALTH_RUNNER = "health_runner"


@kopf.on.startup()
async def configure(*, settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    config = OperatorSettings()
    memo.config = config
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=API_GROUP)
    # Handler log lines become Kubernetes events only from INFO up.
    settings.posting.level = logging.INFO
    # Reconnect watches regularly so a silently dropped stream cannot stall us.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    memo[_HEALTH_RUNNER] = await start_health_server(config.metrics_host, config.metrics_port)
    logger.info("operator started", extra={"namespace": config.namespace})


@kopf.on.cleanup()
async def stop_health_server(*, memo: kopf.Memo, **_: Any) -> None:
    runner: web.AppRunner | None = memo.get(_HEALTH_RUNNER)
    if runner is not None:
        await runner.cleanup()
