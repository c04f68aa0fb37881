"""The client side of bench/bench_files.py: one file up or down, the same way for every HTTP contender.

An upload is UCloud's CHUNKED protocol as the web client speaks it (PROTOCOL-SCHEMAS §7.2):
the file goes chunk by chunk (16,000,000 bytes, the web client's ``maxChunkSize``), each
chunk one ``POST <endpoint>`` with ``Chunked-Upload-Offset`` and
``Chunked-Upload-Total-Size``, sequentially, its body sent by sendfile. A download is one
``GET <endpoint>`` whose body is spliced to disk as it arrives. The client copies nothing
(``bench.http_files``): on this 2-CPU machine it would otherwise eat the CPU it measures.

The contenders differ only in how they get the endpoint:

* :class:`PlainContender`: nginx in front of ``bench.plain_endpoint``; the endpoint is
  fixed (``/upload?name=…``, ``/download?name=…``), nothing is created first;
* :class:`FullPathContender`: UCloud/Core asks the gateway for it (``POST
  /ucloud/<provider>/files/upload`` or ``/files/download``, one item per file), and the
  transfer then goes to the endpoint it answered: gateway → bridge ingress → the user's
  instance. The Core calls are part of what is timed, as they are part of every transfer.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import quote, urljoin, urlsplit

import aiohttp

from bench.http_files import FileRange, HttpFiles
from ucim.common.instance_api import CHUNKED_OFFSET_HEADER, CHUNKED_TOKEN_HEADER, CHUNKED_TOTAL_SIZE_HEADER
from ucim.common.protocol import (
    USERNAME_HEADER,
    Drive,
    FilesCreateDownloadResponseItem,
    FilesCreateUploadResponseItem,
    encode_username,
)
from ucim.common.transfer_contract import WEB_CLIENT_CHUNK_BYTES
from ucim.testing.core_drives import resolved
from ucim.testing.core_standin import USER_NOT_READY_STATUSES, CoreStandIn

TOKEN_REUSE_SECONDS: Final = 60.0  # Core's JWTs live 600 s; the bench mints one a minute, not one a call


class TransferError(RuntimeError):
    """A transfer did not complete; the message has the status and the answer's ``why``."""


async def _refusal(response: aiohttp.ClientResponse, what: str) -> TransferError:
    text = (await response.text(errors="replace"))[:500]
    return TransferError(f"{what} answered {response.status}: {text}")


async def upload_chunked(url: str, source: Path, headers: Mapping[str, str] | None = None) -> None:
    """``source`` to ``url`` in WEB_CLIENT_CHUNK_BYTES chunks, one POST each, in order (at least one, even when empty).

    The chunks go out by sendfile (``bench.http_files``): the client does not copy them.
    """
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    sender = HttpFiles(f"{parts.scheme}://{parts.netloc}")
    fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        offset = 0
        while True:
            count = min(WEB_CLIENT_CHUNK_BYTES, size - offset)
            chunk_headers = {
                **(headers or {}),
                CHUNKED_OFFSET_HEADER: str(offset),
                CHUNKED_TOTAL_SIZE_HEADER: str(size),
            }
            answer = await sender.post(target, chunk_headers, FileRange(fd, offset, count))
            if not 200 <= answer.status < 300:
                why = answer.body[:500].decode(errors="replace")
                raise TransferError(f"chunk at {offset} of {source.name} answered {answer.status}: {why}")
            offset += count
            if offset >= size:
                return
    finally:
        os.close(fd)
        await sender.close()


async def download_to(url: str, destination: Path) -> int:
    """GET ``url`` into ``destination``, spliced from the socket as it arrives; the number of bytes written."""
    parts = urlsplit(url)
    client = HttpFiles(f"{parts.scheme}://{parts.netloc}")
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        answer = await client.get_to(parts.path + (f"?{parts.query}" if parts.query else ""), fd)
    finally:
        os.close(fd)
        await client.close()
    if answer.status != 200:
        why = answer.body[:500].decode(errors="replace")
        raise TransferError(f"download of {destination.name} answered {answer.status}: {why}")
    return answer.stored


async def each_concurrently(names: Iterable[str], work: Callable[[str], Awaitable[None]], concurrency: int) -> None:
    """``work(name)`` for every name, ``concurrency`` at a time (each worker takes the next name)."""
    pending = iter(names)

    async def worker() -> None:
        for name in pending:
            await work(name)

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())


class Contender(Protocol):
    """One way of moving files over HTTP; ``name`` is a path relative to the contender's folder."""

    label: str

    async def upload(self, source: Path, name: str) -> None: ...

    async def download(self, name: str, destination: Path) -> None: ...


class PlainContender:
    """nginx → plain endpoint: the endpoint is known, nothing is created first."""

    label = "nginx → plain endpoint"

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    async def upload(self, source: Path, name: str) -> None:
        await upload_chunked(f"{self.base_url}/upload?name={quote(name)}", source)

    async def download(self, name: str, destination: Path) -> None:
        await download_to(f"{self.base_url}/download?name={quote(name)}", destination)


class ProviderCalls:
    """Core → provider calls for one user, with a token kept for a minute (as a client that keeps its JWT).

    ``core.call_provider`` would mint a fresh RS256 token per call, which is Core's cost, not
    the provider's. A user-not-ready answer (449/503) is handed to ``core.call_provider``,
    which runs Core's ``integration/init`` + retry loop.
    """

    def __init__(self, core: CoreStandIn, session: aiohttp.ClientSession, username: str) -> None:
        self.core = core
        self.session = session
        self.username = username
        self._token = ""
        self._minted = 0.0

    def headers(self) -> dict[str, str]:
        if time.monotonic() - self._minted > TOKEN_REUSE_SECONDS:
            self._token, self._minted = self.core.mint_service_token(), time.monotonic()
        return {"Authorization": f"Bearer {self._token}", USERNAME_HEADER: encode_username(self.username)}

    async def post(self, path: str, body: Any) -> Any:
        """POST ``/ucloud/<provider>/<path>``; the parsed answer, or TransferError."""
        url = self.core.provider_endpoint(path)
        async with self.session.post(url, json=body, headers=self.headers()) as response:
            if response.status == 200:
                return await response.json(content_type=None)
            if response.status not in USER_NOT_READY_STATUSES:
                raise await _refusal(response, f"POST {path}")
        answer = await self.core.call_provider("POST", path, body, self.username)
        if not answer.ok:
            raise TransferError(f"POST {path} answered {answer.status}: {str(answer.body)[:500]}")
        return answer.body


class FullPathContender:
    """Core → gateway for an endpoint, then the transfer through gateway → bridge ingress → instance."""

    label = "full path (gateway → bridge → instance)"

    def __init__(self, calls: ProviderCalls, drive: Drive, folder_id: str) -> None:
        self.calls = calls
        self.drive = resolved(drive)  # as Core sends it with every item
        self.folder_id = folder_id.rstrip("/")
        # Where a relative endpoint would be relative to: the provider's public address, as Core knows it.
        self.base_url = calls.core.provider_endpoint("/ucloud/")

    def file_id(self, name: str) -> str:
        return f"{self.folder_id}/{name}"

    async def create(self, operation: str, item: dict[str, Any]) -> Any:
        """``files/<operation>`` for one item; the one answer item."""
        body = await self.calls.post(f"files/{operation}", {"items": [{**item, "resolvedCollection": self.drive}]})
        answers = body.get("responses") if isinstance(body, dict) else None
        if not isinstance(answers, list) or len(answers) != 1:
            raise TransferError(f"files/{operation} did not answer one item: {str(body)[:500]}")
        return answers[0]

    async def upload(self, source: Path, name: str) -> None:
        item = {
            "id": self.file_id(name),
            "type": "FILE",
            "supportedProtocols": ["CHUNKED"],
            "conflictPolicy": "REPLACE",
        }
        created = FilesCreateUploadResponseItem.model_validate(await self.create("upload", item))
        if created.protocol != "CHUNKED":
            raise TransferError(f"files/upload answered the protocol {created.protocol}, not CHUNKED")
        headers = {CHUNKED_TOKEN_HEADER: created.token, USERNAME_HEADER: encode_username(self.calls.username)}
        await upload_chunked(urljoin(self.base_url, created.endpoint), source, headers)

    async def download(self, name: str, destination: Path) -> None:
        created = FilesCreateDownloadResponseItem.model_validate(
            await self.create("download", {"id": self.file_id(name)})
        )
        await download_to(urljoin(self.base_url, created.endpoint), destination)
