"""The instance application's state: every ``web.AppKey`` it keeps, set once in ``app.init_app``."""

from __future__ import annotations

from aiohttp import web

from ucim.user_sidecar.jobs import Submitter
from ucim.user_sidecar.paths import DriveResolver
from ucim.user_sidecar.settings import SidecarSettings
from ucim.user_sidecar.transfers import Transfers

SETTINGS = web.AppKey("settings", SidecarSettings)
SUBMITTER = web.AppKey("submitter", Submitter)
# Roots the drives a request names: ``request.app[DRIVES].resolve(*collections) -> Drives``.
DRIVES = web.AppKey("drives", DriveResolver)
JOBS_FOLDER = web.AppKey("jobs_folder", str)
TRANSFERS = web.AppKey("transfers", Transfers)
