"""Every error an instance answers is UCloud's error envelope: ``{"why", "statusCode", ...}``."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from ucim.common.protocol import error_body

log = logging.getLogger(__name__)


def error_response(status: int, why: str) -> web.Response:
    return web.json_response(error_body(status, why), status=status)


@web.middleware
async def error_envelope(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return error_response(error.status, error.text or error.reason)
    except Exception:
        log.exception("request failed", extra={"method": request.method, "path": request.path})
        return error_response(500, "the instance could not handle the request")
