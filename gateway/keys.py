"""The gateway application's state: every ``web.AppKey`` it keeps, set once in ``app.init_app``."""

from __future__ import annotations

from aiohttp import web

from ucim.common.core_client import CoreClient
from ucim.common.kube import Kube
from ucim.gateway.auth import CoreVerifier
from ucim.gateway.connections import Connections
from ucim.gateway.drives import Drives
from ucim.gateway.instance_proxy import InstanceProxy
from ucim.gateway.instances import Instances
from ucim.gateway.interactive_jobs import InteractiveJobs
from ucim.gateway.settings import GatewaySettings
from ucim.gateway.web_hosts import WebHosts
from ucim.gateway.web_tokens import WebTokens

SETTINGS = web.AppKey("settings", GatewaySettings)
KUBE = web.AppKey("kube", Kube)
INSTANCES = web.AppKey("instances", Instances)
CONNECTIONS = web.AppKey("connections", Connections)
CORE = web.AppKey[CoreClient | None]("core")
PROXY = web.AppKey("instance_proxy", InstanceProxy)
DRIVES = web.AppKey[Drives | None]("drives")
VERIFIER = web.AppKey("core_verifier", CoreVerifier)
# Served without Core's JWT, per application: the browser-facing transfer endpoints, which
# authenticate by the one-time token the user's instance checks.
TOKEN_PATHS = web.AppKey("token_paths", frozenset[str])
# Web interfaces and remote desktops (``web_apps``): None where they are not configured.
WEB_TOKENS = web.AppKey[WebTokens | None]("web_tokens")
WEB_HOSTS = web.AppKey[WebHosts | None]("web_hosts")
INTERACTIVE_JOBS = web.AppKey("interactive_jobs", InteractiveJobs)
# Set on a sub-application whose requests are not Core's: no JWT (the jobs' web interfaces).
PUBLIC_APP = web.AppKey("public_app", bool)
# The websockets open now (follows, shells): closed at shutdown (``gateway/sockets.py``).
OPEN_SOCKETS = web.AppKey("open_sockets", set[web.WebSocketResponse])
