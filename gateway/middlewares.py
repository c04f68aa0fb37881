"""Request ids, authentication and metrics around every request."""

from __future__ import annotations

import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from ucim.common import request_ids
from ucim.gateway.auth import AuthError
from ucim.gateway.errors import error_response
from ucim.gateway.keys import PUBLIC_APP, TOKEN_PATHS, VERIFIER
from ucim.gateway.metrics import ERRORS, LATENCY, REQUESTS, error_reason

CLAIMS = web.RequestKey("claims", dict)
REQUEST_ID = web.RequestKey("request_id", str)
# Served without Core's JWT: probes and metrics.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_NONE: frozenset[str] = frozenset()
# One line per request with its id: what an audit record's request_id is joined with.
access_log = logging.getLogger("ucim.gateway.access")


def route_template(request: web.Request) -> str:
    """The matched route's template (never the raw path: bounded label values)."""
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A fresh id per request: sent to the instance (``InstanceProxy``), on every log line meanwhile, answered
    (``answer_request_id``), and on the request's own line (``metrics_middleware``).

    Always our own id, never the caller's: the audit trail must not carry an id someone else chose.
    """
    request[REQUEST_ID] = request_id = request_ids.new_request_id()
    reset = request_ids.CURRENT.set(request_id)
    try:
        return await handler(request)
    finally:
        request_ids.CURRENT.reset(reset)


async def answer_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``X-Request-Id`` on every answer, streamed or not, errors too (an ``on_response_prepare`` signal)."""
    if (request_id := request.get(REQUEST_ID)) is not None:
        response.headers[request_ids.HEADER] = request_id


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    start = time.perf_counter()
    route = route_template(request)
    status = 500
    try:
        response = await handler(request)
    except web.HTTPException as error:
        status = error.status
        raise
    else:
        status = response.status
    finally:
        seconds = time.perf_counter() - start
        LATENCY.labels(route, request.method).observe(seconds)
        REQUESTS.labels(route, request.method, str(status)).inc()
        if status >= 400:
            ERRORS.labels(route, error_reason(status)).inc()
        # Not for a job's web interface: a page's every script and image, and nothing there is audited per request.
        if request.path not in PUBLIC_PATHS and not request.match_info.apps[-1].get(PUBLIC_APP, False):
            fields = {"method": request.method, "route": route, "status": status, "seconds": round(seconds, 4)}
            access_log.info("request", extra={"request_id": request.get(REQUEST_ID), **fields})
    return response


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS or request.path in request.app.get(TOKEN_PATHS, _NONE):
        return await handler(request)
    if request.match_info.apps[-1].get(PUBLIC_APP, False):  # a job's web interface: its cookie is checked there
        return await handler(request)
    try:
        request[CLAIMS] = request.app[VERIFIER].verify(request.headers.get("Authorization"))
    except AuthError as error:
        return error_response(401, str(error))
    return await handler(request)
