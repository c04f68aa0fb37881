"""Authentication and metrics around every request."""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import Counter, Histogram

from ucim.gateway.auth import AuthError, CoreVerifier
from ucim.gateway.errors import error_response

VERIFIER = web.AppKey("core_verifier", CoreVerifier)
CLAIMS = web.RequestKey("claims", dict)
# Served without Core's JWT: probes and metrics.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

REQUESTS = Counter("ucim_gateway_requests_total", "Requests answered by the gateway", ["route", "method", "code"])
LATENCY = Histogram(
    "ucim_gateway_request_duration_seconds",
    "Time to answer a request, by route template",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def route_template(request: web.Request) -> str:
    """The matched route's template (never the raw path: bounded label values)."""
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


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
        LATENCY.labels(route, request.method).observe(time.perf_counter() - start)
        REQUESTS.labels(route, request.method, str(status)).inc()
    return response


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    try:
        request[CLAIMS] = request.app[VERIFIER].verify(request.headers.get("Authorization"))
    except AuthError as error:
        return error_response(401, str(error))
    return await handler(request)
