"""Every error leaves the gateway in UCloud's envelope: ``{statusCode, why, errorCode, detailedCode}``."""

from __future__ import annotations

import json
import logging

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_urldispatcher import MatchInfoError

from ucim.common.kube import InvalidError, UnavailableError
from ucim.common.protocol import error_body
from ucim.common.proxy_bodies import AnswerBrokenError

log = logging.getLogger(__name__)


class ProviderError(Exception):
    """A request that cannot be served, with the HTTP status and a readable reason for Core."""

    def __init__(self, status: int, why: str, error_code: str = "") -> None:
        super().__init__(why)
        self.status = status
        self.why = why
        self.error_code = error_code


def error_response(status: int, why: str, error_code: str = "") -> web.Response:
    return web.json_response(error_body(status, why, error_code), status=status)


def http_error_response(request: web.Request, error: web.HTTPException) -> web.Response:
    """aiohttp's own errors in the envelope; the router's (no such path or method) say what was asked."""
    if not isinstance(request.match_info, MatchInfoError):
        return error_response(error.status, error.reason)
    if isinstance(error, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(error.allowed_methods))
        response = error_response(error.status, f"{request.method} is not allowed on {request.path}; use {allowed}")
        response.headers["Allow"] = error.headers["Allow"]
        return response
    return error_response(error.status, f"this provider has no endpoint {request.method} {request.path}")


def bad_request(request: web.Request, error: json.JSONDecodeError | InvalidError) -> web.Response:
    if isinstance(error, json.JSONDecodeError):
        return error_response(400, f"request body is not valid JSON: {error}")
    # The apiserver refused what the request asked to store (a limit no check here knew): the caller's to fix.
    log.warning("the Kubernetes API refused an object", extra={"path": request.path, "error": str(error)})
    return error_response(400, f"this provider cannot store what was asked: {error}")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ProviderError as error:
        return error_response(error.status, error.why, error.error_code)
    except AnswerBrokenError:
        raise  # aiohttp closes the connection, so the caller sees a truncated answer as one
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return http_error_response(request, error)
    except (json.JSONDecodeError, InvalidError) as error:
        return bad_request(request, error)
    except (TimeoutError, UnavailableError) as error:
        # The calls that can time out here are the Kubernetes API's (ucim.common.kube bounds them); the
        # apiserver may also be down or restarting. Core retries a 503, where a 500 fails its call for good.
        log.warning("the Kubernetes API did not answer", extra={"path": request.path}, exc_info=True)
        why = "did not answer in time" if isinstance(error, TimeoutError) else "cannot be reached"
        return error_response(503, f"the Kubernetes API of this provider {why}; try again")
    except Exception:
        log.exception("unhandled error", extra={"path": request.path})
        return error_response(500, "internal server error")
