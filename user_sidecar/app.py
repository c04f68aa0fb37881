"""The user instance's application factory.

Routes: ``POST /jobs/submit``, ``POST /jobs/cancel``, ``POST /jobs/follow`` (``log_follow``),
``POST /jobs/dynamic-parameters``, ``POST /files/browse``,
``/files/retrieve``, ``/files/folder``, ``/files/move``, ``/files/copy``, ``/files/trash``,
``/files/emptyTrash`` and ``/files/delete``; transfers (``/files/upload``,
``/files/download``, ``/transfers/upload``, ``/transfers/download``, see ``transfer_views``); shells
(``POST /shell/sessions``, ``GET /shell/websocket``, see ``terminal``); web and VNC interfaces
(``POST /web/grants``, ``/web/grants/claim``, ``GET /web/connect``, see ``web_sessions``), all in
``ucim.common.instance_api``, ``shell_protocol`` and ``web_sessions``; ``GET /healthz``, ``/readyz``
and ``/metrics``. The instance runs as its user; every file it writes and every Slurm command it runs
is that user's own.

:func:`for_fork_server` is the hook through which the slurm_bridge's fork server runs
instances: it loads and compiles everything once, as root, before any fork, and gives
back the function each forked child calls, after dropping to its user, to build its app.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from ucim.common.app_templates import InvalidJobError
from ucim.common.instance_api import (
    CANCEL_PATH,
    DYNAMIC_PARAMETERS_PATH,
    FILES_BROWSE_PATH,
    FILES_COPY_PATH,
    FILES_DELETE_PATH,
    FILES_EMPTY_TRASH_PATH,
    FILES_FOLDER_PATH,
    FILES_MOVE_PATH,
    FILES_RETRIEVE_PATH,
    FILES_TRASH_PATH,
    JOBS_FOLLOW_PATH,
    SUBMIT_PATH,
    SubmitRequest,
    SubmitResponse,
)
from ucim.common.observability import add_health_routes
from ucim.common.slurm import SlurmClient
from ucim.user_sidecar import views
from ucim.user_sidecar.audit import audit_actions, setup_audit
from ucim.user_sidecar.jobs import Submitter
from ucim.user_sidecar.keys import DRIVES, JOBS_FOLDER, SETTINGS, SUBMITTER, TRANSFERS
from ucim.user_sidecar.load_instructions import (
    ApplicationsSettings,
    SiteApplications,
    SrunConfig,
    load_site_applications,
)
from ucim.user_sidecar.log_follow import follow_job
from ucim.user_sidecar.middlewares import error_envelope
from ucim.user_sidecar.paths import DriveResolver
from ucim.user_sidecar.sbatch import render_job
from ucim.user_sidecar.settings import SidecarSettings
from ucim.user_sidecar.terminal import setup_terminal_routes
from ucim.user_sidecar.transfer_views import add_transfer_routes, exercise
from ucim.user_sidecar.transfers import Transfers
from ucim.user_sidecar.web_sessions import setup_web_session_routes


def site_applications(settings: SidecarSettings) -> SiteApplications:
    """The site's load instructions and modules; LoadInstructionsError names the file that is wrong."""
    return load_site_applications(
        ApplicationsSettings(
            folder=settings.applications_dir,
            system_load=settings.system_load,
            system_unload=settings.system_unload,
            srun=SrunConfig(command=settings.srun_command, flags=tuple(settings.srun_flags)),
            modules_file=settings.modules_file,
        )
    )


def init_app(settings: SidecarSettings, site: SiteApplications | None = None) -> web.Application:
    """The instance's app for ``settings.user`` (default: this process's user)."""
    user = settings.user or pwd.getpwuid(os.geteuid()).pw_name
    home = settings.home or Path(pwd.getpwnam(user).pw_dir)
    drives = DriveResolver(settings.drive_roots, user, home)
    submitter = Submitter(
        site=site or site_applications(settings),
        slurm=SlurmClient(settings.slurm_config(user, home)),
        drives=drives,
        jobs_folder=settings.jobs_folder,
    )
    # The audit first: it records the answer the caller gets, error envelopes included.
    app = web.Application(middlewares=[audit_actions, error_envelope])
    setup_audit(app, settings.audit_socket)
    app[SETTINGS] = settings
    app[SUBMITTER] = submitter
    app[DRIVES] = drives
    app[TRANSFERS] = Transfers.for_instance(settings, drives)
    app[JOBS_FOLDER] = settings.jobs_folder
    app.router.add_post(SUBMIT_PATH, views.submit)
    app.router.add_post(CANCEL_PATH, views.cancel)
    app.router.add_post(DYNAMIC_PARAMETERS_PATH, views.request_dynamic_parameters)
    app.router.add_post(JOBS_FOLLOW_PATH, follow_job)
    app.router.add_post(FILES_BROWSE_PATH, views.browse_files)
    app.router.add_post(FILES_RETRIEVE_PATH, views.retrieve_file)
    app.router.add_post(FILES_FOLDER_PATH, views.create_folder)
    app.router.add_post(FILES_MOVE_PATH, views.move_files)
    app.router.add_post(FILES_COPY_PATH, views.copy_files)
    app.router.add_post(FILES_TRASH_PATH, views.trash_files)
    app.router.add_post(FILES_EMPTY_TRASH_PATH, views.empty_trash)
    app.router.add_post(FILES_DELETE_PATH, views.delete_files)
    add_transfer_routes(app)
    setup_terminal_routes(app)
    setup_web_session_routes(app)
    add_health_routes(app)
    return app


ChildAppFactory = Callable[[Mapping[str, Any]], web.Application]


def for_fork_server(options: Mapping[str, Any]) -> ChildAppFactory:
    """Called once in the fork server (root, before any fork): preload, then hand out the factory.

    ``options`` are SidecarSettings fields. The returned function gets the child's
    account (``user``, ``home``, ...) and runs in the child, which can no longer read
    the installation: so the site's load instructions are read here and the code paths a
    request takes are exercised once, which imports every module they need.
    """
    base = SidecarSettings(**options)
    site = site_applications(base)
    _warm_up(base, site)

    def make(account: Mapping[str, Any]) -> web.Application:
        settings = base.model_copy(update={"user": str(account["user"]), "home": Path(account["home"])})
        return init_app(settings, site)

    return make


# An application using every helper of the template language, rendered once before any fork.
_WARM_UP_TEMPLATE = (
    '{- versionResolver("loose") -}\n{- applicationLoad -}\n{- systemLoad -}\n{{ sbatch("ntasks", 1) }}'
    '{{ srun() }} run {{ text }} {{ flag | flag("--on") }} {{ text | option("--o") }} {{ ternary(flag, 1, 2) }}'
    '{% if text is match("w") and text is search("u") %}{{ ucloud.jobId }}{% endif %}\n{- systemUnload -}\n'
)


def _warm_up(settings: SidecarSettings, site: SiteApplications) -> None:
    """Serve a throw-away app and send it one request per code path that has no side effect.

    Modules that aiohttp, pydantic or prometheus_client import lazily (the response
    compressor's thread pool, say) are imported here, in the fork server, where the
    installation is readable. The loop is closed again before any fork.
    """
    sample = {
        "jobId": "0",
        "slurmJobName": "warm-up",
        "application": {
            "name": "warm-up",
            "version": "1",
            "invocation": [{"type": "jinja", "template": _WARM_UP_TEMPLATE}],
            "parameters": [{"type": "text", "name": "text"}, {"type": "boolean", "name": "flag", "optional": True}],
            "environment": {"WARM": {"type": "word", "word": "up"}},
            "load": [{"name": "warm-up", "version": "1"}],
        },
        "parameters": {"text": {"type": "text", "value": "warm\nup"}},
        "product": {"id": "warm-up", "category": "warm-up"},
        "resources": {"nodes": 1, "cpusPerNode": 1, "memoryMegabytesPerNode": 1, "timeLimitMinutes": 1},
    }
    render_job(SubmitRequest.model_validate(sample), Path("/nonexistent/0"), site, {})
    # An error raised inside a template call: Jinja imports jinja2.debug only to report one.
    refused = {"type": "jinja", "template": '{{ sbatch("account", "x") }}'}
    with contextlib.suppress(InvalidJobError):
        failing = {**sample, "application": {**sample["application"], "invocation": [refused]}}  # type: ignore[dict-item]
        render_job(SubmitRequest.model_validate(failing), Path("/nonexistent/0"), site, {})
    json.dumps(
        SubmitResponse(slurm_job_id=1, job_folder="/", folder_in_drive="-").model_dump(mode="json", by_alias=True)
    )
    with tempfile.TemporaryDirectory(prefix="ucim-warm-up-home-") as home:
        (Path(home) / "Trash").mkdir()
        (Path(home) / "a.txt").write_bytes(b"warm-up")
        (Path(home) / "tree").mkdir()
        (Path(home) / "tree" / "link").symlink_to("../a.txt")
        # No audit socket: the warm-up acts for nobody (its records would be refused anyway: root is no instance).
        warm_up = settings.model_copy(update={"user": "root", "home": Path(home), "audit_socket": None})
        app = init_app(warm_up, site)
        calls: list[tuple[str, str, bytes | None]] = [
            ("GET", "/healthz", None),
            ("GET", "/readyz", None),
            ("GET", "/metrics", None),
            ("POST", SUBMIT_PATH, b"not json"),
            ("POST", SUBMIT_PATH, b"{}"),
            ("POST", SUBMIT_PATH, json.dumps({**sample, "drive": "home:someone-else"}).encode()),  # a 400 before Slurm
            ("POST", DYNAMIC_PARAMETERS_PATH, b"{}"),  # a 400: no owner, no application
            ("POST", CANCEL_PATH, b"{}"),
            ("GET", "/nowhere", None),
            ("POST", FILES_RETRIEVE_PATH, _retrieve("/home/a.txt")),
            ("POST", FILES_RETRIEVE_PATH, _retrieve("/home/missing")),
            ("POST", FILES_RETRIEVE_PATH, _retrieve("/home/../etc")),
            ("POST", FILES_RETRIEVE_PATH, _retrieve("/other/a.txt")),
            ("POST", FILES_RETRIEVE_PATH, _retrieve("/home/a.txt", locator="home:someone-else")),
            ("POST", FILES_RETRIEVE_PATH, _retrieve("/home/a.txt", locator="project:nobody")),
            ("POST", FILES_BROWSE_PATH, _browse("/home", itemsPerPage=1)),
            ("POST", FILES_BROWSE_PATH, _browse("/home", sortBy="SIZE", sortDirection="descending")),
            ("POST", FILES_BROWSE_PATH, _browse("/home/a.txt", sortBy="MODIFIED_AT", next="bm90IGEgdG9rZW4")),
            ("POST", FILES_FOLDER_PATH, _items({"id": "/home/made", "conflictPolicy": "REJECT"})),
            ("POST", FILES_FOLDER_PATH, _items({"id": "/home/made", "conflictPolicy": "REJECT"})),  # 409
            ("POST", FILES_FOLDER_PATH, _items({"id": "/home/made", "conflictPolicy": "RENAME"})),
            ("POST", FILES_COPY_PATH, _items(_two("/home/tree", "/home/made/tree", "RENAME"))),
            ("POST", FILES_COPY_PATH, _items(_two("/home/tree", "/home/made/tree", "MERGE_RENAME"))),
            ("POST", FILES_MOVE_PATH, _items(_two("/home/made/tree", "/home/tree", "MERGE_RENAME"))),
            ("POST", FILES_MOVE_PATH, _items(_two("/home/tree", "/home/made", "REPLACE"))),
            ("POST", FILES_MOVE_PATH, _items(_two("/home/made", "/home/made/in", "REJECT"))),  # into itself
            ("POST", FILES_TRASH_PATH, _items({"id": "/home/made"})),
            ("POST", FILES_TRASH_PATH, _items({"id": "/home/Trash/made"})),
            ("POST", FILES_TRASH_PATH, _items({"id": "/home/a.txt"})),
            ("POST", FILES_EMPTY_TRASH_PATH, _items({"id": "/home"})),
            ("POST", FILES_DELETE_PATH, _items({"id": "/home/made(1)"})),
            ("POST", FILES_DELETE_PATH, _items({"id": "/home/missing"})),
            ("POST", FILES_DELETE_PATH, json.dumps({"items": [{"id": "/home/a.txt"}]}).encode()),  # no drive
        ]
        asyncio.run(_exercise(app, calls))


def _drive(locator: str = "home:root") -> dict[str, Any]:
    return {"id": "home", "providerGeneratedId": locator}


def _retrieve(file_id: str, locator: str = "home:root") -> bytes:
    return json.dumps({"resolvedCollection": _drive(locator), "retrieve": {"id": file_id, "flags": {}}}).encode()


def _browse(path: str, **request: Any) -> bytes:
    return json.dumps({"resolvedCollection": _drive(), "Browse": {"flags": {"path": path}, **request}}).encode()


def _two(old: str, new: str, policy: str) -> dict[str, Any]:
    drives = {"resolvedOldCollection": _drive(), "resolvedNewCollection": _drive()}
    return {**drives, "oldId": old, "newId": new, "conflictPolicy": policy}


def _items(*items: dict[str, Any]) -> bytes:
    return json.dumps({"items": [{"resolvedCollection": _drive(), **item} for item in items]}).encode()


async def _exercise(app: web.Application, calls: list[tuple[str, str, bytes | None]]) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        with tempfile.TemporaryDirectory(prefix="ucim-warm-up-") as folder:
            path = str(Path(folder) / "warm-up.sock")
            await web.UnixSite(runner, path).start()
            connector = aiohttp.UnixConnector(path=path)
            async with aiohttp.ClientSession(connector=connector) as session:
                for method, route, body in calls:
                    headers = {"Accept-Encoding": "gzip, deflate", "Content-Type": "application/json"}
                    async with session.request(method, f"http://warm-up{route}", data=body, headers=headers) as r:
                        await r.read()
                await exercise(session, "http://warm-up", _drive())
    finally:
        await runner.cleanup()
