"""Core's ``jobs/interactiveSession``: a shell, a web interface or a remote desktop of a running job.

Each item must be the acting user's job, running (``sessions.running_job``); its ``OpenSession``
is made by ``shell`` (SHELL) or ``web_apps`` (WEB, VNC). The first failing item fails the call, as IM2.
"""

from __future__ import annotations

from aiohttp import web

from ucim.common.protocol import BulkRequest, BulkResponse, dump
from ucim.common.shell_protocol import InteractiveSessionItem, ShellSession
from ucim.common.web_sessions import VncSession, WebSession
from ucim.gateway.files import core_user
from ucim.gateway.sessions import running_job
from ucim.gateway.shell import job_shell
from ucim.gateway.views import parse
from ucim.gateway.web_apps import vnc_session, web_session

InteractiveSessionRequest = BulkRequest[InteractiveSessionItem]
OpenSessions = BulkResponse[ShellSession | WebSession | VncSession]


async def interactive_session(request: web.Request) -> web.Response:
    username = core_user(request)
    body = await parse(request, InteractiveSessionRequest)
    sessions: list[ShellSession | WebSession | VncSession] = []
    for item in body.items:
        job = await running_job(request, username, item.job.id)
        if item.session_type == "SHELL":
            sessions.append(await job_shell(request, username, job, item))
        elif item.session_type == "WEB":
            sessions.append(await web_session(request, username, job, item))
        else:
            sessions.append(await vnc_session(request, username, job, item))
    return web.json_response(dump(OpenSessions(responses=sessions)))


def setup_interactive_routes(app: web.Application, base: str) -> None:
    app.router.add_post(f"{base}/jobs/interactiveSession", interactive_session)
