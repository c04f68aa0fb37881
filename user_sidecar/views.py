"""The instance API handlers (paths in ``ucim.common.instance_api``)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ucim.common.instance_api import CancelRequest, SubmitRequest
from ucim.common.protocol import FilesProviderBrowseRequest, FilesProviderRetrieveRequest, dump
from ucim.common.slurm import SlurmError, SlurmRejectedError, SlurmUnavailableError
from ucim.user_sidecar.files import Files
from ucim.user_sidecar.jobs import SUBMISSIONS, Submitter
from ucim.user_sidecar.middlewares import error_response
from ucim.user_sidecar.paths import PathRefusedError
from ucim.user_sidecar.templates import InvalidJobError

log = logging.getLogger(__name__)

SUBMITTER = web.AppKey("submitter", Submitter)
FILES = web.AppKey("files", Files)
M = TypeVar("M", bound=BaseModel)


def readable(error: ValidationError, limit: int = 5) -> str:
    """Pydantic's errors as one line a person can act on."""
    parts = []
    for item in error.errors(include_url=False, include_input=False)[:limit]:
        where = ".".join(str(part) for part in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    return "invalid request: " + "; ".join(parts)


async def parse(request: web.Request, model: type[M]) -> M:
    try:
        data: Any = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise web.HTTPBadRequest(text=f"the body is not JSON: {error}") from error
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise web.HTTPBadRequest(text=readable(error)) from error


async def submit(request: web.Request) -> web.Response:
    body = await parse(request, SubmitRequest)
    try:
        result = await request.app[SUBMITTER].submit(body)
    except InvalidJobError as error:
        SUBMISSIONS.labels("invalid").inc()
        return error_response(400, str(error))
    except SlurmRejectedError as error:
        SUBMISSIONS.labels("rejected").inc()
        log.info("sbatch refused the job", extra={"job_id": body.job_id, "why": str(error)})
        return error_response(400, str(error))
    except SlurmError as error:
        SUBMISSIONS.labels("unavailable").inc()
        log.warning("submission failed", extra={"job_id": body.job_id, "why": str(error)})
        return error_response(503, str(error))
    SUBMISSIONS.labels("already_submitted" if result.already_submitted else "submitted").inc()
    return web.json_response(result.model_dump(mode="json", by_alias=True))


async def cancel(request: web.Request) -> web.Response:
    body = await parse(request, CancelRequest)
    try:
        await request.app[SUBMITTER].cancel(body.slurm_job_ids)
    except SlurmUnavailableError as error:
        return error_response(503, str(error))
    except SlurmError as error:
        return error_response(400, str(error))
    return web.json_response({})


async def browse_files(request: web.Request) -> web.Response:
    body = (await parse(request, FilesProviderBrowseRequest)).browse
    flags = body.flags
    if not flags.path:
        return error_response(400, "Browse.flags.path is required: the folder to list")
    direction = body.sort_direction or flags.sort_direction or "ascending"
    try:
        page = await asyncio.to_thread(
            request.app[FILES].browse,
            flags.path,
            sort_by=body.sort_by or flags.sort_by,
            descending=direction == "descending",
            items_per_page=body.items_per_page,
            next_token=body.next,
            filter_hidden=bool(flags.filter_hidden_files),
            extension=flags.filter_by_file_extension,
        )
    except PathRefusedError as error:
        return error_response(error.status, str(error))
    return web.json_response(dump(page))


async def retrieve_file(request: web.Request) -> web.Response:
    body = await parse(request, FilesProviderRetrieveRequest)
    try:
        found = await asyncio.to_thread(request.app[FILES].retrieve, body.retrieve.id)
    except PathRefusedError as error:
        return error_response(error.status, str(error))
    return web.json_response(dump(found))
