"""Shells: Core's ``jobs/interactiveSession`` (SHELL) and ``jobs/openTerminalInFolder``, and the shell websocket.

For each item the gateway checks what only it knows (the job is the acting user's and
running, from its UCloudJob; the folder's drive, from Core) and asks the user's instance
for a session (``SHELL_SESSIONS_PATH``); the instance checks the rest as the user and
answers a one-time token. Core gets ``OpenSession`` of type shell with that token and the
gateway's public URL as a websocket URL (``domainOverride``).

The browser then opens ``/ucloud/<P>/websocket?session=<token>&usernameHint=<user>``
without Core's JWT (as for transfers, the token is the credential). The gateway holds no
session state: it opens a websocket to the hinted user's instance through a tunnel and
relays frames both ways until either side closes. Only the instance that made a token
knows it, so another user's hint reaches an instance that answers 404, and so does a
used or expired token; the refusal comes before the upgrade, as a readable 4xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Final

import aiohttp
from aiohttp import WSMsgType, web
from pydantic import BaseModel, ValidationError
from yarl import URL

from ucim.common.protocol import BulkRequest, BulkResponse, dump
from ucim.common.resources import UCloudJob
from ucim.common.shell_protocol import (
    SHELL_SESSIONS_PATH,
    SHELL_WEBSOCKET_PATH,
    FolderShell,
    InteractiveSessionItem,
    JobShell,
    OpenTerminalInFolderItem,
    ShellSession,
    ShellSessionToken,
    is_token,
)
from ucim.gateway.errors import ProviderError
from ucim.gateway.files import core_user
from ucim.gateway.instance_proxy import InstanceNotReadyError, InstanceUnreachableError
from ucim.gateway.keys import DRIVES, KUBE, PROXY, SETTINGS, TOKEN_PATHS
from ucim.gateway.settings import GatewaySettings
from ucim.gateway.sockets import tracked
from ucim.gateway.transfers import transfer_user
from ucim.gateway.views import parse

UNKNOWN_SESSION: Final = "unknown, used or expired shell session"
# Pings through the tunnel: they keep an idle shell's instance counted as active by the bridge.
HEARTBEAT_SECONDS: Final = 30.0
MAX_TOKEN_ANSWER_BYTES: Final = 64 * 1024

InteractiveSessionRequest = BulkRequest[InteractiveSessionItem]
OpenTerminalRequest = BulkRequest[OpenTerminalInFolderItem]
ShellSessions = BulkResponse[ShellSession]


def websocket_domain(settings: GatewaySettings) -> str:
    """The gateway's public origin as a websocket origin (``ws``/``wss``; the port unless the default)."""
    url = URL(settings.public_url)
    scheme = "wss" if url.scheme == "https" else "ws"
    port = "" if url.is_default_port() or url.explicit_port is None else f":{url.explicit_port}"
    return f"{scheme}://{url.raw_host}{port}"


async def instance_token(request: web.Request, username: str, session: BaseModel) -> str:
    """Ask the user's instance for a shell session: its token, or its refusal as it is (449 when not running)."""
    body = session.model_dump_json(by_alias=True).encode()
    try:
        upstream = await request.app[PROXY].send(
            username, "POST", SHELL_SESSIONS_PATH, headers={"Content-Type": "application/json"}, body=body, tunnel=True
        )
    except InstanceNotReadyError as error:
        raise ProviderError(449, f"{error}; call integration/init") from error
    except InstanceUnreachableError as error:
        raise ProviderError(502, str(error)) from error
    async with upstream:
        answer = await upstream.content.read(MAX_TOKEN_ANSWER_BYTES)
        status = upstream.status
    if status >= 300:
        raise ProviderError(status, _why(answer) or f"the instance refused the shell session ({status})")
    try:
        return ShellSessionToken.model_validate_json(answer).token
    except ValidationError as error:
        raise ProviderError(502, "the instance answered a shell session without a token") from error


def _why(answer: bytes) -> str | None:
    with contextlib.suppress(ValueError):
        found = json.loads(answer)
        why = found.get("why") if isinstance(found, dict) else None
        return why if isinstance(why, str) else None
    return None


async def running_job(request: web.Request, username: str, job_id: str) -> UCloudJob:
    """The acting user's running job, or a 4xx that says why not."""
    settings = request.app[SETTINGS]
    job = await request.app[KUBE].get(UCloudJob, settings.namespace, UCloudJob.name_for(job_id))
    if job is None:
        raise ProviderError(404, f"job {job_id} is not known to this provider")
    if job.spec.owner != username:
        raise ProviderError(403, f"job {job_id} is not {username}'s: a shell runs as the job's owner")
    status = job.status
    if status.state != "RUNNING" or status.slurm_job_id is None or not status.node_list:
        raise ProviderError(400, f"job {job_id} is not running ({status.state or 'not started'}): no shell yet")
    return job


async def interactive_session(request: web.Request) -> web.Response:
    username = core_user(request)
    body = await parse(request, InteractiveSessionRequest)
    domain = websocket_domain(request.app[SETTINGS])
    sessions = []
    for item in body.items:  # the first failing item fails the call, as IM2
        if item.session_type != "SHELL":
            raise ProviderError(400, f"{item.session_type.lower()} sessions are not supported by this provider")
        job = await running_job(request, username, item.job.id)
        shell = JobShell(slurm_job_id=job.status.slurm_job_id, node_list=job.status.node_list, rank=item.rank)
        token = await instance_token(request, username, shell)
        sessions.append(
            ShellSession(job_id=item.job.id, rank=item.rank, session_identifier=token, domain_override=domain)
        )
    return web.json_response(dump(ShellSessions(responses=sessions)))


async def open_terminal_in_folder(request: web.Request) -> web.Response:
    username = core_user(request)
    body = await parse(request, OpenTerminalRequest)
    drives = request.app[DRIVES]
    if drives is None:
        raise ProviderError(503, "terminals in folders need UCloud/Core, whose URL and refresh token are not set")
    domain = websocket_domain(request.app[SETTINGS])
    sessions = []
    for item in body.items:
        drive_id = item.folder.lstrip("/").partition("/")[0]
        if not drive_id or not item.folder.startswith("/"):
            raise ProviderError(400, f"{item.folder[:200]!r} is not a UCloud folder (/<drive id>/path)")
        locator = (await drives.locators.locators({drive_id}))[drive_id]
        token = await instance_token(request, username, FolderShell(folder=item.folder, drive=locator))
        sessions.append(ShellSession(job_id=item.folder, rank=0, session_identifier=token, domain_override=domain))
    return web.json_response(dump(ShellSessions(responses=sessions)))


# --- the websocket -----------------------------------------------------------------


async def shell_websocket(request: web.Request) -> web.StreamResponse:
    """The browser's shell socket, relayed to the hinted user's instance once it accepts the token."""
    username = transfer_user(request)
    token = request.query.get("session", "")
    if not is_token(token):
        raise ProviderError(400, "the session query parameter is not a shell session token")
    try:
        upstream = await request.app[PROXY].websocket(
            username, SHELL_WEBSOCKET_PATH, {"session": token}, heartbeat=HEARTBEAT_SECONDS
        )
    except InstanceNotReadyError as error:
        raise ProviderError(404, UNKNOWN_SESSION) from error  # tokens live in a running instance only
    except InstanceUnreachableError as error:
        raise ProviderError(502, str(error)) from error
    except aiohttp.WSServerHandshakeError as error:
        if 400 <= error.status < 500:
            raise ProviderError(404 if error.status == 404 else error.status, UNKNOWN_SESSION) from error
        raise ProviderError(502, f"the instance did not open the shell ({error.status})") from error
    browser = web.WebSocketResponse(protocols=("binary",), max_msg_size=4 << 20)
    try:
        async with tracked(request, browser, "shell"):
            await browser.prepare(request)
            await relay_frames(browser, upstream)
    finally:
        await upstream.close()
        await browser.close()
    return browser


async def relay_frames(browser: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> None:
    """Frames both ways, unread, until either side closes; then the other is closed too."""

    async def to_instance() -> None:
        async for frame in browser:
            if frame.type == WSMsgType.TEXT:
                await upstream.send_str(frame.data)
            elif frame.type == WSMsgType.BINARY:
                await upstream.send_bytes(frame.data)

    async def to_browser() -> None:
        async for frame in upstream:
            if frame.type == WSMsgType.TEXT:
                await browser.send_str(frame.data)
            elif frame.type == WSMsgType.BINARY:
                await browser.send_bytes(frame.data)
        if upstream.close_code is not None:  # the instance's reason (no initialize, session ended) goes on
            await browser.close(code=upstream.close_code, message=b"")

    tasks = [asyncio.create_task(to_instance()), asyncio.create_task(to_browser())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def setup_shell_routes(app: web.Application, base: str) -> None:
    """Core's shell calls and the browser's socket (after ``setup_transfer_routes``: it adds a TOKEN_PATH)."""
    app.router.add_post(f"{base}/jobs/interactiveSession", interactive_session)
    app.router.add_post(f"{base}/jobs/openTerminalInFolder", open_terminal_in_folder)
    app.router.add_get(f"{base}/websocket", shell_websocket)
    app[TOKEN_PATHS] = app.get(TOKEN_PATHS, frozenset()) | {f"{base}/websocket"}
