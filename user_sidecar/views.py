"""The instance API handlers (paths in ``ucim.common.instance_api``).

File calls carry their drives (``resolvedCollection`` and friends): every handler roots
them with ``app[DRIVES]`` (``keys.py``) before it touches a file id. Bulk file calls run
their items in order; the first that fails ends the call with its status and a why that names it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from ucim.common.app_templates import InvalidJobError
from ucim.common.instance_api import CancelRequest, SubmitRequest
from ucim.common.protocol import (
    BulkRequest,
    BulkResponse,
    Drive,
    Empty,
    FilesProviderBrowseRequest,
    FilesProviderCreateFolderRequestItem,
    FilesProviderMoveOrCopyRequestItem,
    FilesProviderRetrieveRequest,
    FilesProviderTrashRequestItem,
    UFile,
    dump,
)
from ucim.common.slurm_errors import SlurmError, SlurmRejectedError, SlurmUnavailableError
from ucim.user_sidecar import fileops
from ucim.user_sidecar.dynamic_parameters import DynamicParametersRequest, DynamicParametersResponse, dynamic_parameters
from ucim.user_sidecar.files import Files
from ucim.user_sidecar.jobs import JobFolderError
from ucim.user_sidecar.keys import DRIVES, JOBS_FOLDER, SETTINGS, SUBMITTER
from ucim.user_sidecar.metrics import SUBMISSIONS
from ucim.user_sidecar.middlewares import error_response
from ucim.user_sidecar.paths import SHOWN_ID_CHARS, Drives, PathRefusedError, parse_id, refusal

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
Item = TypeVar("Item", bound=BaseModel)


class FilesDeleteRequestItem(UFile):
    """An item of Core's ``DELETE files``: a UFile, which names its drive by id only.

    Core's Go UFile carries no locator. A caller may add the drive as ``resolvedCollection``
    (UCloud's older provider API had that field); otherwise the instance uses the drive
    as an earlier request named it (``DriveResolver.recall``: a user browses a folder
    before deleting in it), and refuses the item with a 400 that says so when none did.
    """

    resolved_collection: Drive = Field(default_factory=Drive)


# Built once, here: pydantic makes a class per parametrization.
FolderRequest = BulkRequest[FilesProviderCreateFolderRequestItem]
MoveOrCopyRequest = BulkRequest[FilesProviderMoveOrCopyRequestItem]
TrashRequest = BulkRequest[FilesProviderTrashRequestItem]
DeleteRequest = BulkRequest[FilesDeleteRequestItem]
EmptyResponses = BulkResponse[Empty]


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
    except (InvalidJobError, PathRefusedError) as error:
        # Always a 400, even for another user's home: a 403 would read as "not now" to the operator.
        SUBMISSIONS.labels("invalid").inc()
        return error_response(400, str(error))
    except JobFolderError as error:
        # Not now: the bridge has not made the project's folder yet, or this instance has not got its group.
        SUBMISSIONS.labels("unavailable").inc()
        log.warning("no job folder", extra={"job_id": body.job_id, "why": str(error)})
        return error_response(503, str(error))
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


async def request_dynamic_parameters(request: web.Request) -> web.Response:
    """Core's ``jobs/requestDynamicParameters``: what this site adds to an application's form."""
    body = await parse(request, DynamicParametersRequest)
    submitter = request.app[SUBMITTER]
    try:
        found = await dynamic_parameters(
            body, submitter.site, submitter.slurm, account_picker=request.app[SETTINGS].account_picker
        )
    except ValidationError as error:
        return error_response(400, f"the application's load instructions are malformed: {error.errors()[0]['msg']}")
    return web.json_response(dump(DynamicParametersResponse(parameters=found)))


async def cancel(request: web.Request) -> web.Response:
    body = await parse(request, CancelRequest)
    try:
        await request.app[SUBMITTER].cancel(body.slurm_job_ids)
    except SlurmUnavailableError as error:
        return error_response(503, str(error))
    except SlurmError as error:
        return error_response(400, str(error))
    return web.json_response({})


def files_for(request: web.Request, *collections: Drive) -> Files:
    """Browse and retrieve on the drives of this request."""
    return Files(request.app[DRIVES].resolve(*collections), jobs_folder=request.app[JOBS_FOLDER])


async def browse_files(request: web.Request) -> web.Response:
    whole = await parse(request, FilesProviderBrowseRequest)
    body = whole.browse
    flags = body.flags
    if not flags.path:
        return error_response(400, "Browse.flags.path is required: the folder to list")
    direction = body.sort_direction or flags.sort_direction or "ascending"
    try:
        page = await asyncio.to_thread(
            files_for(request, whole.resolved_collection).browse,
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
        found = await asyncio.to_thread(files_for(request, body.resolved_collection).retrieve, body.retrieve.id)
    except PathRefusedError as error:
        return error_response(error.status, str(error))
    return web.json_response(dump(found))


async def run_items(
    request: web.Request,
    model: type[BulkRequest[Item]],
    drives_of: Callable[[Item], tuple[Drive, ...]],
    shown: Callable[[Item], str],
    operation: Callable[[Drives, Item], object],
) -> web.Response:
    """Run ``operation`` on each item in turn, in a thread; one ``{}`` per item, or the first failure."""
    body = await parse(request, model)
    for number, item in enumerate(body.items, start=1):
        what = f"item {number} ({shown(item)[:SHOWN_ID_CHARS]})"
        try:
            drives = request.app[DRIVES].resolve(*drives_of(item))
            await asyncio.to_thread(operation, drives, item)
        except PathRefusedError as error:
            return error_response(error.status, f"{what}: {error}")
        except OSError as error:  # the operations answer OSErrors themselves; this is the safety net
            failure = refusal(error, what)
            return error_response(failure.status, str(failure))
    return web.json_response(dump(EmptyResponses(responses=[Empty() for _ in body.items])))


async def create_folder(request: web.Request) -> web.Response:
    def operation(drives: Drives, item: FilesProviderCreateFolderRequestItem) -> object:
        return fileops.create_folder(drives, drives.parse(item.id), item.conflict_policy)

    return await run_items(request, FolderRequest, lambda item: (item.resolved_collection,), _id, operation)


async def move_files(request: web.Request) -> web.Response:
    def operation(drives: Drives, item: FilesProviderMoveOrCopyRequestItem) -> object:
        return fileops.move(drives, drives.parse(item.old_id), drives.parse(item.new_id), item.conflict_policy)

    return await run_items(request, MoveOrCopyRequest, _old_and_new_drives, _old_and_new, operation)


async def copy_files(request: web.Request) -> web.Response:
    def operation(drives: Drives, item: FilesProviderMoveOrCopyRequestItem) -> object:
        return fileops.copy(drives, drives.parse(item.old_id), drives.parse(item.new_id), item.conflict_policy)

    return await run_items(request, MoveOrCopyRequest, _old_and_new_drives, _old_and_new, operation)


async def trash_files(request: web.Request) -> web.Response:
    def operation(drives: Drives, item: FilesProviderTrashRequestItem) -> object:
        return fileops.trash(drives, drives.parse(item.id))

    return await run_items(request, TrashRequest, lambda item: (item.resolved_collection,), _id, operation)


async def empty_trash(request: web.Request) -> web.Response:
    def operation(drives: Drives, item: FilesProviderTrashRequestItem) -> object:
        fileops.empty_trash(drives, drives.parse(item.id))
        return None

    return await run_items(request, TrashRequest, lambda item: (item.resolved_collection,), _id, operation)


async def delete_files(request: web.Request) -> web.Response:
    resolver = request.app[DRIVES]

    def drive_of(item: FilesDeleteRequestItem) -> tuple[Drive, ...]:
        if item.resolved_collection.id:
            return (item.resolved_collection,)
        drive_id = item.specification.collection or parse_id(item.id).drive
        known = resolver.recall(drive_id)
        if known is None:
            raise PathRefusedError(
                f"Core's delete does not say where drive {drive_id[:100]} is, and no call since this instance"
                " started named it: open the drive, then delete again"
            )
        return (known,)

    def operation(drives: Drives, item: FilesDeleteRequestItem) -> object:
        fileops.delete(drives, drives.parse(item.id))
        return None

    return await run_items(request, DeleteRequest, drive_of, _id, operation)


def _id(item: FilesProviderCreateFolderRequestItem | FilesProviderTrashRequestItem | UFile) -> str:
    return item.id


def _old_and_new(item: FilesProviderMoveOrCopyRequestItem) -> str:
    return f"{item.old_id} -> {item.new_id}"


def _old_and_new_drives(item: FilesProviderMoveOrCopyRequestItem) -> tuple[Drive, ...]:
    return item.resolved_old_collection, item.resolved_new_collection
