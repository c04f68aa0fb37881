"""Web and VNC interfaces of the user's jobs: grants, and TCP connections to the job's server as the user.

``POST WEB_GRANTS_PATH`` (from the gateway, for Core's ``interactiveSession`` WEB or VNC) finds
the node of the rank, as a shell does, and its address (Slurm's NodeAddr), and answers it with a
one-time token that stands for the target (job, rank, node address, port). ``POST WEB_CLAIMS_PATH``
hands the target out once, when the browser redeems the token at ``authorize-app``.

``GET WEB_CONNECT_PATH?node=&port=`` upgraded to ``ucim-tcp`` connects to ``node:port`` and
carries the bytes both ways: the gateway then speaks the job server's own HTTP (or websocket)
through the bridge's tunnel and this one. The connection is opened by this process, so as its
user, from the frontend, which reaches the compute nodes where the management cluster does not.
"""

from __future__ import annotations

import logging
import re

from aiohttp import web
from pydantic import ValidationError

from ucim.common.byte_tunnels import UnreachableError, tcp, tunnel, wants_tunnel
from ucim.common.shell_protocol import NODE_PATTERN
from ucim.common.slurm import SlurmClient
from ucim.common.slurm_errors import SlurmUnavailableError
from ucim.common.web_sessions import (
    TCP_UPGRADE,
    WEB_CLAIMS_PATH,
    WEB_CONNECT_PATH,
    WEB_GRANTS_PATH,
    WebClaim,
    WebGrant,
    WebGrantRequest,
    WebTarget,
)
from ucim.user_sidecar.keys import SUBMITTER
from ucim.user_sidecar.middlewares import error_response
from ucim.user_sidecar.one_time_tokens import OneTimeTokens
from ucim.user_sidecar.terminal import CommandRefusedError, node_of
from ucim.user_sidecar.views import readable

log = logging.getLogger(__name__)

WEB_TOKENS = web.AppKey("web_tokens", OneTimeTokens[WebTarget])
_NODE = re.compile(NODE_PATTERN)
_NODE_ADDR = re.compile(r"\bNodeAddr=(\S+)")
UNKNOWN_GRANT = "Unknown application requested. Please try again!"  # IM2's words for an unknown token


async def create_grant(request: web.Request) -> web.Response:
    try:
        body = WebGrantRequest.model_validate_json(await request.read())
    except ValidationError as error:
        return error_response(400, readable(error))
    slurm = request.app[SUBMITTER].slurm
    try:
        node = await node_address(slurm, await node_of(slurm, body.node_list, body.rank))
    except CommandRefusedError as error:
        return error_response(error.status, str(error))
    target = WebTarget(job_id=body.job_id, rank=body.rank, target=body.target, node=node, port=body.port)
    token = request.app[WEB_TOKENS].make(target)
    return web.json_response(WebGrant(token=token, node=node).model_dump(by_alias=True))


async def node_address(slurm: SlurmClient, node: str) -> str:
    """Where the frontend reaches ``node``: its NodeAddr, as Slurm itself does (a node's name need not resolve)."""
    try:
        result = await slurm.run("scontrol", ["show", "node", "--oneliner", node])
    except SlurmUnavailableError as error:
        raise CommandRefusedError(503, str(error)) from error
    found = _NODE_ADDR.search(result.stdout) if result.returncode == 0 else None
    address = found[1] if found else node
    return address if _NODE.match(address) else node


async def claim_grant(request: web.Request) -> web.Response:
    try:
        body = WebClaim.model_validate_json(await request.read())
    except ValidationError as error:
        return error_response(400, readable(error))
    target = request.app[WEB_TOKENS].claim(body.token)
    if target is None:
        return error_response(404, UNKNOWN_GRANT)
    return web.json_response(target.model_dump(by_alias=True, exclude_none=True))


async def connect(request: web.Request) -> web.StreamResponse:
    """A tunnel to ``node:port``, opened as this instance's user."""
    if not wants_tunnel(request, TCP_UPGRADE):
        return error_response(400, f"connect by upgrading the connection to {TCP_UPGRADE}")
    node, port = request.query.get("node", ""), request.query.get("port", "")
    if not _NODE.match(node):
        return error_response(400, f"{node[:100]!r} is not a node name")
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65_535):
        return error_response(400, f"{port[:20]!r} is not a TCP port")
    try:
        return await tunnel(request, tcp(node, int(port)), TCP_UPGRADE)
    except UnreachableError as error:
        # The job's server is not listening (yet, or any more): the browser sees a 502 with this why.
        return error_response(502, f"the job's server on {node}:{port} takes no connection: {error}")


def setup_web_session_routes(app: web.Application) -> None:
    app[WEB_TOKENS] = OneTimeTokens(token_bytes=12)
    app.router.add_post(WEB_GRANTS_PATH, create_grant)
    app.router.add_post(WEB_CLAIMS_PATH, claim_grant)
    app.router.add_get(WEB_CONNECT_PATH, connect)
