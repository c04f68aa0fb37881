"""The provider API that UCloud/Core calls, under /ucloud/<provider>/.

Routing follows the protocol: a call that names an end user (``UCloud-Username``
or ``usernameHint``) needs that user's instance Ready, or is answered 449 so
that Core runs ``integration/init`` and retries; ``integration/*`` is served
whatever the headers, and so is ``jobs/extend``, which root applies on the frontend
(``extensions.py``), not the user's instance.

Connections: ``integration/connect`` makes sure the user's UserConnection exists, waits
(bounded) for the bridge to map it to a local account, approves it at Core and answers
``redirectTo``; a refused mapping is a 403 with the reason. ``integration/unlinked``
expires the connection (the uid is kept) and stops the user's instance; the operator then
clears it at Core. ``integration/init`` for a user who never connected connects them when
``auto_connect`` is on (the default, as IM2 does), and otherwise answers 403 "not
connected"; a user whose connection ended (expired or unlinked) gets a 403 that says so and
is never connected again by init: only ``integration/connect`` does that. Connect and init
also register the user's home drive with Core once the local account is known
(``ucim.gateway.drives``).

File calls and transfers live in ``files.py`` and ``transfers.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ucim.common import reasons
from ucim.common.conditions import find_condition
from ucim.common.core_client import CoreClient, CoreError
from ucim.common.instance_api import DYNAMIC_PARAMETERS_PATH
from ucim.common.kube import ConflictError, Kube, NotFoundError
from ucim.common.protocol import (
    BulkRequest,
    BulkResponse,
    ConnectResponse,
    Empty,
    FindByStringId,
    FindByUsername,
    IntegrationManifest,
    Job,
    JobExtendRequestItem,
    JobSupport,
    dump,
)
from ucim.common.reasons import SUBMITTED
from ucim.common.resources import UCloudJob, UCloudProject, UserConnection, UserInstance
from ucim.common.times import now_utc
from ucim.common.workspaces import NOT_ENOUGH_COMPUTE_CREDITS, home_drive, insufficient_funds, job_workspace
from ucim.gateway.auth import acting_username, check_username
from ucim.gateway.connections import ConnectionRefusedError, ended_why, is_connected
from ucim.gateway.errors import ProviderError
from ucim.gateway.extensions import extend_job
from ucim.gateway.file_parameters import file_drive_ids
from ucim.gateway.files import forwarder
from ucim.gateway.instances import MappingRefusedError
from ucim.gateway.jobs import to_ucloud_job, validate_jobs
from ucim.gateway.keys import CONNECTIONS, CORE, DRIVES, INSTANCES, KUBE, SETTINGS

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


async def parse(request: web.Request, model: type[M]) -> M:
    """The request body as ``model``, or a 400 that says what is wrong with it."""
    if not request.body_exists:
        raise ProviderError(400, "no request body found")
    try:
        return model.model_validate_json(await request.read())
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in error.errors()[:5])
        raise ProviderError(400, f"invalid request: {problems}") from error


def ok(model: BaseModel) -> web.Response:
    return web.json_response(dump(model))


async def require_ready_user(request: web.Request) -> str | None:
    """The acting user, whose instance must be Ready; None for a server-to-server call."""
    username = acting_username(request)
    if username is not None and not await request.app[INSTANCES].is_ready(username):
        raise ProviderError(449, f"the instance of {username} is not ready; call integration/init")
    return username


# --- integration ------------------------------------------------------------------


async def username_of(request: web.Request) -> str:
    body = await parse(request, FindByUsername)
    if not body.username:
        raise ProviderError(400, "username is required")
    return check_username(body.username, "the request body")


def core_of(request: web.Request) -> CoreClient:
    core = request.app[CORE]
    if core is None:
        raise ProviderError(503, "this provider cannot reach UCloud/Core: its URL and refresh token are not configured")
    return core


async def integration_connect(request: web.Request) -> web.Response:
    username = await username_of(request)
    settings, connections = request.app[SETTINGS], request.app[CONNECTIONS]
    asked_at = now_utc()
    connection = await connections.ensure(username, asked_at)
    try:
        async with asyncio.timeout(settings.connect_wait_seconds):
            connection = await connections.wait_mapped(username, asked_at)
    except ConnectionRefusedError as error:
        raise ProviderError(403, f"the user {username} cannot use this provider: {error}") from error
    except TimeoutError as error:
        raise ProviderError(
            503, f"the user {username} could not be mapped to a local account in time; try again"
        ) from error
    try:
        await core_of(request).approve_connection(username)
    except CoreError as error:
        raise ProviderError(502, f"UCloud/Core did not approve the connection: {error}") from error
    await connections.mark_connected(connection, reasons.CONNECTION_APPROVED, datetime.now(UTC))
    log.info("user connected", extra={"ucloud_user": username, "uid": connection.spec.uid})
    await register_home_drive(request, connection)
    return ok(ConnectResponse(redirect_to=settings.ucloud_url))


async def integration_unlinked(request: web.Request) -> web.Response:
    username = await username_of(request)
    app = request.app
    connection = await app[CONNECTIONS].get(username)
    if connection is not None:
        await app[CONNECTIONS].mark_unlinked(connection, datetime.now(UTC))
    # The bridge stops the instance's process when its UserInstance goes; the operator tells Core (clearConnection).
    await app[KUBE].delete(UserInstance, app[SETTINGS].namespace, app[INSTANCES].name_for(username))
    log.info("user unlinked", extra={"ucloud_user": username})
    return ok(Empty())


async def require_connected(request: web.Request, username: str) -> UserConnection:
    """The user's connection; a user never connected is connected now (auto_connect), or refused with a 403.

    A connection that has ended (expired, unlinked) is never renewed here: Core has been told
    (clearConnection) and shows the user the Connect button; ``integration/connect`` renews it.
    """
    connections, now = request.app[CONNECTIONS], datetime.now(UTC)
    connection = await connections.get(username)
    if is_connected(connection, now) and connection is not None:
        return connection
    if (why := ended_why(connection, now)) is not None:
        raise ProviderError(403, why)
    if not request.app[SETTINGS].auto_connect:
        raise ProviderError(403, f"the user {username} is not connected to this provider; connect through UCloud first")
    connection = await connections.ensure(username, now)
    return await connections.mark_connected(connection, reasons.AUTO_CONNECTED, now)


async def register_home_drive(request: web.Request, connection: UserConnection) -> None:
    """Register the user's home drive with Core if it is not yet (and the user is mapped); never fails the call."""
    drives = request.app[DRIVES]
    if drives is None:
        return
    try:
        await drives.ensure_home(connection)
    except (CoreError, NotFoundError) as error:
        # The next connect or init tries again: the drive is only remembered once Core has it.
        user = connection.spec.ucloud_username
        log.warning("registering the home drive failed", extra={"ucloud_user": user, "error": str(error)})


async def integration_init(request: web.Request) -> web.Response:
    """The user's instance Ready, within Core's budget: 503 (Core tries again) rather than no answer in time.

    A login storm (every user of a restarted provider at once) slows each apiserver write to a second and
    more; Core counts an init it had no answer to in 5 s as failed, and gives up on a user after five.
    """
    username = await username_of(request)
    settings = request.app[SETTINGS]
    try:
        async with asyncio.timeout(settings.core_call_budget_seconds):
            await _init(request, username)
    except TimeoutError as error:
        raise ProviderError(
            503, f"the instance of {username} is not ready yet; it keeps starting, try again"
        ) from error
    return ok(Empty())


async def _init(request: web.Request, username: str) -> None:
    connection = await require_connected(request, username)
    instances = request.app[INSTANCES]
    await instances.ensure(username)
    try:
        async with asyncio.timeout(request.app[SETTINGS].init_wait_seconds):
            await instances.wait_ready(username)
    except MappingRefusedError as error:
        raise ProviderError(403, f"the user {username} cannot use this provider: {error}") from error
    if home_drive(connection) is None:
        # Read again: the bridge maps the user's account while the instance starts.
        connection = await request.app[CONNECTIONS].get(username) or connection
        await register_home_drive(request, connection)


async def retrieve_manifest(request: web.Request) -> web.Response:
    return ok(IntegrationManifest(enabled=True, expire_after_ms=request.app[SETTINGS].connection_expire_after_ms))


# --- jobs ---------------------------------------------------------------------------


async def create_jobs(request: web.Request) -> web.Response:
    # Core gives a provider call about 5 s: everything after the creates must fit the rest of the budget.
    deadline = asyncio.get_running_loop().time() + request.app[SETTINGS].core_call_budget_seconds
    acting_user = await require_ready_user(request)
    body = await parse(request, BulkRequest[Job])
    validate_jobs(body.items, acting_user)
    settings, kube = request.app[SETTINGS], request.app[KUBE]
    drives = await file_drives(request, body.items)
    wanted = [
        to_ucloud_job(
            job,
            namespace=settings.namespace,
            cluster=settings.cluster,
            provider_id=settings.provider_id,
            machines=settings.machine_types,
            drives=drives,
        )
        for job in body.items
    ]
    if settings.accounting_enabled:
        for job in wanted:
            await check_wallet(kube, settings.namespace, job)
    for job in wanted:
        # The same UCloud job again finds the existing resource: creation is idempotent.
        with contextlib.suppress(ConflictError):
            await kube.create(job, settings.namespace)
    wait = min(settings.submit_wait_seconds, deadline - asyncio.get_running_loop().time())
    rejections = await wait_for_submissions(kube, settings.namespace, wanted, wait)
    if len(wanted) == 1 and rejections:
        # Core shows a single job's error to the user; the job never existed in Slurm, so keep nothing.
        await kube.delete(UCloudJob, settings.namespace, wanted[0].metadata.name)
        raise ProviderError(400, rejections[wanted[0].metadata.name])
    return ok(BulkResponse[FindByStringId](responses=[FindByStringId(id=job.metadata.name) for job in wanted]))


async def file_drives(request: web.Request, jobs: list[Job]) -> dict[str, str]:
    """The locator of each drive the jobs' file parameters name (asked of Core once per drive)."""
    wanted = file_drive_ids(jobs)
    if not wanted:
        return {}
    drives = request.app[DRIVES]
    if drives is None:
        raise ProviderError(503, "file parameters need UCloud/Core, whose URL and refresh token are not set")
    return await drives.locators.locators(wanted)


async def check_wallet(kube: Kube, namespace: str, job: UCloudJob) -> None:
    """Refuse a job whose workspace's wallet for its category is locked (402, Core's words), before it exists."""
    workspace = job_workspace(job.spec.owner, job.spec.project)
    found = await kube.get(UCloudProject, namespace, UCloudProject.name_for(workspace))
    why = insufficient_funds(found, job.spec.product.category)
    if why is not None:
        raise ProviderError(402, why, NOT_ENOUGH_COMPUTE_CREDITS)


def submission_settled(job: UCloudJob | None) -> bool:
    """The operator has an answer for the job (Submitted is True or False), or the job is gone."""
    if job is None:
        return True
    condition = find_condition(job.status.conditions, SUBMITTED)
    return condition is not None and condition.status != "Unknown"


async def wait_for_submissions(kube: Kube, namespace: str, jobs: list[UCloudJob], wait: float) -> dict[str, str]:
    """Wait (at most ``wait`` seconds) until each job is submitted or rejected; the rejections' messages by name.

    Jobs still waiting for Slurm then are answered as created: Core hears how their
    submission ends through job updates.
    """
    if wait <= 0:
        return {}
    waits = [
        asyncio.create_task(kube.wait_for(UCloudJob, namespace, j.metadata.name, submission_settled)) for j in jobs
    ]
    done, pending = await asyncio.wait(waits, timeout=wait)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    rejected: dict[str, str] = {}
    for task in done:
        if (error := task.exception()) is not None:
            # The jobs exist: an answer other than 200 now would make Core fail a job that then runs.
            log.warning("waiting for a submission failed; its outcome reaches Core as an update", exc_info=error)
            continue
        job = task.result()
        condition = find_condition(job.status.conditions, SUBMITTED) if job is not None else None
        if job is not None and condition is not None and condition.status == "False":
            rejected[job.metadata.name] = condition.message
    return rejected


async def terminate_jobs(request: web.Request) -> web.Response:
    await require_ready_user(request)
    body = await parse(request, BulkRequest[Job])
    settings, kube = request.app[SETTINGS], request.app[KUBE]
    for job in body.items:
        try:
            await kube.patch(UCloudJob, settings.namespace, UCloudJob.name_for(job.id), {"spec": {"terminate": True}})
        except NotFoundError:
            # Nothing left to stop (never created, or already gone): done, as IM2's terminate is (slurm/compute.go).
            log.info("terminate of a job this provider does not know", extra={"job_id": job.id})
    return ok(BulkResponse[Empty](responses=[Empty() for _ in body.items]))


async def extend_jobs(request: web.Request) -> web.Response:
    """``jobs/extend``: each job's time limit raised within the site's policy, by the bridge (``extensions.py``).

    The extension is done by root on the frontend, not in the user's instance, so this call needs no instance
    and never answers 449. Items are served in order and the first that fails fails the call, as the anchor's.
    """
    settings = request.app[SETTINGS]
    deadline = asyncio.get_running_loop().time() + settings.core_call_budget_seconds
    acting_user = acting_username(request)
    body = await parse(request, BulkRequest[JobExtendRequestItem])
    if not settings.extension.enabled:
        raise ProviderError(400, "extension of jobs is not supported by this provider")
    for item in body.items:
        wait = min(settings.extension.wait_seconds, deadline - asyncio.get_running_loop().time())
        await extend_job(settings, request.app[KUBE], item, acting_user, wait)
    return ok(BulkResponse[Empty](responses=[Empty() for _ in body.items]))


async def retrieve_products(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    web, vnc = settings.web_interfaces_enabled, settings.vnc_enabled
    extend = settings.extension.enabled
    supports = [
        machine.support(settings.provider_id, web=web, vnc=vnc, time_extension=extend)
        for machine in settings.machine_types
    ]
    return ok(BulkResponse[JobSupport](responses=supports))


async def not_supported(request: web.Request) -> web.Response:
    operation = request.match_info.get("operation", "this operation")
    raise ProviderError(400, f"{operation} of jobs is not supported by this provider")


def setup_routes(app: web.Application, provider_id: str) -> None:
    base = f"/ucloud/{provider_id}"
    app.router.add_post(f"{base}/integration/init", integration_init)
    app.router.add_post(f"{base}/integration/connect", integration_connect)
    app.router.add_post(f"{base}/integration/unlinked", integration_unlinked)
    app.router.add_get(f"{base}/integration/retrieveManifest", retrieve_manifest)
    app.router.add_post(f"{base}/jobs", create_jobs)
    app.router.add_post(f"{base}/jobs/terminate", terminate_jobs)
    app.router.add_get(f"{base}/jobs/retrieveProducts", retrieve_products)
    # The user's instance knows the user's Slurm accounts and the site's load instructions.
    app.router.add_post(f"{base}/jobs/requestDynamicParameters", forwarder(DYNAMIC_PARAMETERS_PATH))
    app.router.add_post(f"{base}/jobs/extend", extend_jobs)
    app.router.add_post(f"{base}/jobs/{{operation:suspend|unsuspend}}", not_supported)


__all__ = ["setup_routes"]
