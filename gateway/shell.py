"""Shells: Core's ``jobs/interactiveSession`` (SHELL, via ``interactive``) and ``jobs/openTerminalInFolder``,
and the shell websocket.

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

from typing import Final

import aiohttp
from aiohttp import web
from yarl import URL

from ucim.common.protocol import BulkRequest, BulkResponse, dump
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
from ucim.gateway.keys import DRIVES, PROXY, SETTINGS, TOKEN_PATHS
from ucim.gateway.sessions import RunningJob, ask_instance
from ucim.gateway.settings import GatewaySettings
from ucim.gateway.sockets import tracked
from ucim.gateway.transfers import transfer_user
from ucim.gateway.views import parse
from ucim.gateway.ws_relay import relay_frames

UNKNOWN_SESSION: Final = "unknown, used or expired shell session"
# Pings through the tunnel: they keep an idle shell's instance counted as active by the bridge.
HEARTBEAT_SECONDS: Final = 30.0

OpenTerminalRequest = BulkRequest[OpenTerminalInFolderItem]
ShellSessions = BulkResponse[ShellSession]


def websocket_domain(settings: GatewaySettings) -> str:
    """The gateway's public origin as a websocket origin (``ws``/``wss``; the port unless the default)."""
    url = URL(settings.public_url)
    scheme = "wss" if url.scheme == "https" else "ws"
    port = "" if url.is_default_port() or url.explicit_port is None else f":{url.explicit_port}"
    return f"{scheme}://{url.raw_host}{port}"


async def job_shell(request: web.Request, username: str, job: RunningJob, item: InteractiveSessionItem) -> ShellSession:
    """A SHELL item of ``jobs/interactiveSession``: a terminal on the node of the item's rank."""
    shell = JobShell(slurm_job_id=job.slurm_job_id, node_list=job.node_list, rank=item.rank)
    token = await session_token(request, username, shell)
    domain = websocket_domain(request.app[SETTINGS])
    return ShellSession(job_id=item.job.id, rank=item.rank, session_identifier=token, domain_override=domain)


async def session_token(request: web.Request, username: str, shell: JobShell | FolderShell) -> str:
    return (await ask_instance(request, username, SHELL_SESSIONS_PATH, shell, ShellSessionToken)).token


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
        token = await session_token(request, username, FolderShell(folder=item.folder, drive=locator))
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


def setup_shell_routes(app: web.Application, base: str) -> None:
    """Core's shell calls and the browser's socket (a TOKEN_PATH: no JWT)."""
    app.router.add_post(f"{base}/jobs/openTerminalInFolder", open_terminal_in_folder)
    app.router.add_get(f"{base}/websocket", shell_websocket)
    app[TOKEN_PATHS] = app.get(TOKEN_PATHS, frozenset()) | {f"{base}/websocket"}
