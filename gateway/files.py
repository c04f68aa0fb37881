"""Core's file and drive calls (``/ucloud/<provider>/files/...``), served by the user's instance.

The instance parses Core's bodies itself (``ucim.common.instance_api``), so the gateway
forwards them unread: method, body and answer stream through unchanged, and only the
answers of ``files/upload`` and ``files/download`` are rewritten, from the instance's
tokens into the endpoints Core hands to the browser (``ucim.gateway.transfers``).

Every call here acts for the user in ``UCloud-Username``; a user whose instance is not
Ready gets 449, so that Core runs ``integration/init`` and retries.
"""

from __future__ import annotations

import base64
from typing import Final

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import ValidationError
from yarl import URL

from ucim.common import instance_api as api
from ucim.common.instance_api import TransferToken
from ucim.common.products import storage_support
from ucim.common.protocol import (
    BulkResponse,
    FilesCreateDownloadResponseItem,
    FilesCreateUploadResponseItem,
    FSSupport,
    dump,
)
from ucim.common.proxy_bodies import forwarded_body
from ucim.gateway.auth import USERNAME_HINT, acting_username
from ucim.gateway.errors import ProviderError
from ucim.gateway.instance_proxy import (
    InstanceNotReadyError,
    InstanceUnreachableError,
    pick_headers,
    relay,
)
from ucim.gateway.keys import PROXY, SETTINGS
from ucim.gateway.settings import GatewaySettings

# Core's JSON bodies need nothing else.
CORE_CALL_HEADERS: Final = ("Content-Type",)
# Tokens are short; an answer larger than this is not the instance's.
MAX_TOKEN_ANSWER_BYTES: Final = 1 << 20

# Core's route (under files/) -> the instance's path; all are POSTs on the instance.
FORWARDED: Final = {
    ("POST", "browse"): api.FILES_BROWSE_PATH,
    ("POST", "retrieve"): api.FILES_RETRIEVE_PATH,
    ("POST", "folder"): api.FILES_FOLDER_PATH,
    ("POST", "move"): api.FILES_MOVE_PATH,
    ("POST", "copy"): api.FILES_COPY_PATH,
    ("POST", "trash"): api.FILES_TRASH_PATH,
    ("POST", "emptyTrash"): api.FILES_EMPTY_TRASH_PATH,
    ("DELETE", ""): api.FILES_DELETE_PATH,
}
# What UCloud may ask and this provider does not do; FSSupport says so too.
NOT_SUPPORTED: Final = {
    ("POST", "search"): "searching files",
    ("POST", "visualize"): "visualizing folders",
    ("POST", "transfer"): "transfers between providers",
    ("POST", "updateAcl"): "sharing files",
    ("GET", ""): "streaming search",
    ("POST", "collections"): "creating drives",
    ("DELETE", "collections"): "deleting drives",
    ("POST", "collections/rename"): "renaming drives",
    ("POST", "collections/updateAcl"): "sharing drives",
}


def username_hint(username: str) -> str:
    """``usernameHint``: the username in URL-safe base64 without padding, as IM2 writes it."""
    return base64.urlsafe_b64encode(username.encode()).decode("ascii").rstrip("=")


def transfer_endpoint(settings: GatewaySettings, kind: str, username: str, token: str | None = None) -> str:
    """The browser-facing URL of an upload (``kind`` "upload") or a download (with its token)."""
    url = URL(settings.public_url.rstrip("/") + f"/ucloud/{settings.provider_id}/{kind}")
    query = {"token": token} if token is not None else {}
    return str(url.with_query({**query, USERNAME_HINT: username_hint(username)}))


def core_user(request: web.Request) -> str:
    username = acting_username(request)
    if username is None:
        raise ProviderError(400, "this call acts for a user: the UCloud-Username header is required")
    return username


async def send_for_core(request: web.Request, path: str) -> tuple[str, aiohttp.ClientResponse]:
    """Send a call of Core's on to the acting user's instance (through a tunnel): the user and the answer.

    No instance to answer is a 449 (Core then runs ``integration/init``); an unreachable one a 502.
    """
    username = core_user(request)
    body = await forwarded_body(request, request.app[SETTINGS].instance_read_timeout_seconds)
    headers = pick_headers(request, CORE_CALL_HEADERS)
    try:
        upstream = await request.app[PROXY].send(username, "POST", path, headers=headers, body=body, tunnel=True)
    except InstanceNotReadyError as error:
        raise ProviderError(449, f"{error}; call integration/init") from error
    except InstanceUnreachableError as error:
        raise ProviderError(502, str(error)) from error
    return username, upstream


async def forward_for_core(request: web.Request, path: str) -> web.StreamResponse:
    """Forward a call of Core's to the user's instance and stream its answer back."""
    _, upstream = await send_for_core(request, path)
    return await relay(request, upstream, idle_seconds=request.app[SETTINGS].instance_read_timeout_seconds)


def forwarder(path: str) -> Handler:
    """The handler of a Core call that the instance serves at ``path``."""

    async def forward(request: web.Request) -> web.StreamResponse:
        return await forward_for_core(request, path)

    return forward


class _InstanceRefusalError(Exception):
    """The instance refused a transfer; its answer goes to Core as it is."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


async def create_transfer(request: web.Request, path: str) -> tuple[str, list[TransferToken]]:
    """Forward a create-upload or create-download: the acting user and the instance's tokens, in order."""
    username, upstream = await send_for_core(request, path)
    async with upstream:
        answer = await upstream.content.read(MAX_TOKEN_ANSWER_BYTES + 1)
        status = upstream.status
    if status >= 300:
        raise _InstanceRefusalError(status, answer)
    if len(answer) > MAX_TOKEN_ANSWER_BYTES:
        raise ProviderError(502, "the instance's answer to a transfer is too large")
    try:
        tokens = BulkResponse[TransferToken].model_validate_json(answer).responses
    except ValidationError as error:
        why = error.errors()[0]["msg"]
        raise ProviderError(502, f"the instance answered a transfer without tokens: {why}") from error
    return username, tokens


def _passed_on(refusal: _InstanceRefusalError) -> web.Response:
    return web.Response(status=refusal.status, body=refusal.body, content_type="application/json")


def upload_endpoint(settings: GatewaySettings, username: str, answer: TransferToken) -> FilesCreateUploadResponseItem:
    """A file's CHUNKED endpoint (the browser sends the token in Chunked-Upload-Token), or a folder's
    WEBSOCKET_V2 socket (the token in its query, as IM2 writes it: ``ws[s]://…/upload?token=…&usernameHint=…``)."""
    if answer.protocol != "WEBSOCKET_V2":
        endpoint = transfer_endpoint(settings, "upload", username)
        return FilesCreateUploadResponseItem(endpoint=endpoint, protocol="CHUNKED", token=answer.token)
    url = URL(transfer_endpoint(settings, "upload", username, answer.token))
    socket = url.with_scheme("wss" if url.scheme == "https" else "ws")
    return FilesCreateUploadResponseItem(endpoint=str(socket), protocol="WEBSOCKET_V2", token=answer.token)


async def create_upload(request: web.Request) -> web.Response:
    """``files/upload``: one endpoint per item, CHUNKED for a file, WEBSOCKET_V2 for a folder."""
    try:
        username, tokens = await create_transfer(request, api.FILES_UPLOAD_PATH)
    except _InstanceRefusalError as refusal:
        return _passed_on(refusal)
    items = [upload_endpoint(request.app[SETTINGS], username, answer) for answer in tokens]
    return web.json_response(dump(BulkResponse[FilesCreateUploadResponseItem](responses=items)))


async def create_download(request: web.Request) -> web.Response:
    """``files/download``: one endpoint per item, the token in its query."""
    try:
        username, tokens = await create_transfer(request, api.FILES_DOWNLOAD_PATH)
    except _InstanceRefusalError as refusal:
        return _passed_on(refusal)
    settings = request.app[SETTINGS]
    items = [
        FilesCreateDownloadResponseItem(endpoint=transfer_endpoint(settings, "download", username, answer.token))
        for answer in tokens
    ]
    return web.json_response(dump(BulkResponse[FilesCreateDownloadResponseItem](responses=items)))


async def retrieve_products(request: web.Request) -> web.Response:
    """``files/retrieveProducts`` and ``files/collections/retrieveProducts``: the storage products' support."""
    supports = storage_support(request.app[SETTINGS].provider_id)
    return web.json_response(dump(BulkResponse[FSSupport](responses=supports)))


async def verify_drives(request: web.Request) -> web.Response:
    """``files/collections/verify``: the drives are the site's accounts and groups; there is nothing to repair."""
    return web.json_response({})


def refuser(what: str) -> Handler:
    """The handler of a call this provider does not serve: a 400 that says so (not a 404)."""

    async def refuse(request: web.Request) -> web.Response:
        raise ProviderError(400, f"{what} is not supported by this provider")

    return refuse


def setup_file_routes(app: web.Application, base: str) -> None:
    """Core's file and drive routes under ``base`` (``/ucloud/<provider>``); each a literal path (metrics)."""
    app.router.add_get(f"{base}/files/retrieveProducts", retrieve_products)
    app.router.add_get(f"{base}/files/collections/retrieveProducts", retrieve_products)
    app.router.add_post(f"{base}/files/collections/verify", verify_drives)
    app.router.add_post(f"{base}/files/upload", create_upload)
    app.router.add_post(f"{base}/files/download", create_download)
    for (method, operation), path in FORWARDED.items():
        app.router.add_route(method, f"{base}/files/{operation}".rstrip("/"), forwarder(path))
    for (method, operation), what in NOT_SUPPORTED.items():
        app.router.add_route(method, f"{base}/files/{operation}".rstrip("/"), refuser(what))
