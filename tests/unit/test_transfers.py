"""Uploads (CHUNKED) and downloads through the transfer routes, on a temporary home."""

from __future__ import annotations

import asyncio
import getpass
import hashlib
import json
import os
import stat
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import REGISTRY
from pytest_aiohttp import AiohttpClient

from ucim.common.instance_api import (
    CHUNKED_OFFSET_HEADER,
    CHUNKED_TOKEN_HEADER,
    CHUNKED_TOTAL_SIZE_HEADER,
    DOWNLOAD_FILE_PATH,
    FILES_DOWNLOAD_PATH,
    FILES_UPLOAD_PATH,
    UPLOAD_CHUNK_PATH,
)
from ucim.common.transfer_contract import MAX_CHUNK_BYTES
from ucim.user_sidecar import transfers as transfers_module
from ucim.user_sidecar.keys import TRANSFERS
from ucim.user_sidecar.middlewares import error_envelope
from ucim.user_sidecar.paths import DriveResolver
from ucim.user_sidecar.settings import SidecarSettings
from ucim.user_sidecar.transfer_io import TransferRefusedError
from ucim.user_sidecar.transfer_sessions import (
    DownloadSession,
    Location,
    SessionStore,
    TransferLimits,
    UploadSession,
    digest,
)
from ucim.user_sidecar.transfer_views import add_transfer_routes, exercise
from ucim.user_sidecar.transfers import Transfers

USER = getpass.getuser()
DRIVE = {"id": "home", "providerGeneratedId": f"home:{USER}"}
MIB = 1 << 20
LIMITS = TransferLimits(max_upload_bytes=64 * MIB, body_idle_seconds=0.5)
Client = TestClient[web.Request, web.Application]


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    client: Client
    home: Path
    transfers: Transfers
    clock: Clock

    def new_transfers(self, limits: TransferLimits = LIMITS) -> Transfers:
        """Another instance of the same user (as after a restart)."""
        return Transfers(self.transfers.store.folder, self.transfers._drives, limits, self.clock)


def make_transfers(home: Path, clock: Clock, limits: TransferLimits = LIMITS) -> Transfers:
    return Transfers(home / ".ucim" / "transfers", DriveResolver({"home": "~"}, USER, home), limits, clock)


async def serve(aiohttp_client: AiohttpClient, transfers: Transfers) -> Client:
    app = web.Application(middlewares=[error_envelope])
    app[TRANSFERS] = transfers
    add_transfer_routes(app)
    return await aiohttp_client(app)


@pytest.fixture
async def world(aiohttp_client: AiohttpClient, tmp_path: Path) -> World:
    home = tmp_path / "home"
    (home / "up").mkdir(parents=True)
    clock = Clock()
    transfers = make_transfers(home, clock)
    return World(await serve(aiohttp_client, transfers), home, transfers, clock)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def upload_item(path: str, policy: str = "REJECT", **fields: Any) -> dict[str, Any]:
    return {
        "id": path,
        "supportedProtocols": ["CHUNKED", "WEBSOCKET"],
        "conflictPolicy": policy,
        "resolvedCollection": DRIVE,
        **fields,
    }


async def post_json(w: World, route: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with w.client.post(route, json=body) as response:
        return response.status, await response.json()


async def create_upload(w: World, path: str, policy: str = "REJECT") -> str:
    status, answer = await post_json(w, FILES_UPLOAD_PATH, {"items": [upload_item(path, policy)]})
    assert status == 200, answer
    token: str = answer["responses"][0]["token"]
    return token


async def create_download(w: World, path: str) -> str:
    status, answer = await post_json(w, FILES_DOWNLOAD_PATH, {"items": [{"id": path, "resolvedCollection": DRIVE}]})
    assert status == 200, answer
    token: str = answer["responses"][0]["token"]
    return token


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


async def send(w: World, token: str, offset: int, total: int, data: bytes, **headers: str) -> Answer:
    sent = {
        CHUNKED_TOKEN_HEADER: token,
        CHUNKED_OFFSET_HEADER: str(offset),
        CHUNKED_TOTAL_SIZE_HEADER: str(total),
        "Content-Type": "application/octet-stream",
        **{name.replace("_", "-"): value for name, value in headers.items()},
    }
    async with w.client.post(UPLOAD_CHUNK_PATH, data=data, headers=sent) as response:
        return Answer(response.status, await response.json(), dict(response.headers))


async def progress(w: World, token: str) -> Answer:
    async with w.client.get(UPLOAD_CHUNK_PATH, headers={CHUNKED_TOKEN_HEADER: token}) as response:
        return Answer(response.status, await response.json(), dict(response.headers))


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not await check():  # noqa: ASYNC110 - another task changes what is checked
            await asyncio.sleep(0.02)


async def send_when_free(w: World, token: str, offset: int, total: int, data: bytes) -> Answer:
    """Send a chunk once the instance has finished with an interrupted one (409 until then)."""
    answers: list[Answer] = []

    async def accepted() -> bool:
        answers.append(await send(w, token, offset, total, data))
        return answers[-1].status != 409 or "one chunk at a time" not in answers[-1].body["why"]

    await eventually(accepted)
    return answers[-1]


class Raw:
    """A chunk sent over a bare connection, so that the test decides when the body stops."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, w: World, token: str, *, offset: int, total: int, declared: int, body: bytes = b"") -> Raw:
        server = w.client.server
        reader, writer = await asyncio.open_connection(server.host, server.port)
        head = (
            f"POST {UPLOAD_CHUNK_PATH} HTTP/1.1\r\nHost: test\r\n{CHUNKED_TOKEN_HEADER}: {token}\r\n"
            f"{CHUNKED_OFFSET_HEADER}: {offset}\r\n{CHUNKED_TOTAL_SIZE_HEADER}: {total}\r\n"
            f"Content-Length: {declared}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        return cls(reader, writer)

    async def answer(self) -> Answer:
        status_line = await self.reader.readline()
        headers: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers["content-length"]))
        return Answer(int(status_line.split()[1]), json.loads(body), headers)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def pieces(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- uploads --------------------------------------------------------------------


async def test_an_upload_in_chunks_is_byte_identical_and_only_visible_when_complete(world: World) -> None:
    w = world
    data = os.urandom(3 * MIB + 123)
    target = w.home / "up" / "data.bin"
    uploaded, completed = (
        metric("ucim_instance_upload_bytes_total"),
        metric("ucim_instance_transfers_total", kind="upload", outcome="completed"),
    )
    token = await create_upload(w, "/home/up/data.bin")
    assert (await progress(w, token)).body == {"offset": 0, "totalSize": None, "complete": False, "id": None}
    size = 1_500_000
    for start in range(0, len(data) - size, size):
        answer = await send(w, token, start, len(data), data[start : start + size])
        assert answer.status == 200, answer.body
        assert answer.body == {"offset": start + size, "totalSize": len(data), "complete": False, "id": None}
        assert answer.headers["Access-Control-Allow-Origin"] == "*"
        assert not target.exists()  # never an incomplete file under the target's name
        (partial,) = [p for p in (w.home / "up").iterdir() if p.name.startswith(".ucim-upload-")]
        assert partial.name == f".ucim-upload-{digest(token)[:16]}.part"
        assert stat.S_IMODE(partial.stat().st_mode) == 0o600
    last = len(data) // size * size
    answer = await send(w, token, last, len(data), data[last:])
    assert answer.body == {"offset": len(data), "totalSize": len(data), "complete": True, "id": "/home/up/data.bin"}
    assert sha256(target.read_bytes()) == sha256(data)
    assert sorted(p.name for p in (w.home / "up").iterdir()) == ["data.bin"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    # The token is dead for chunks; its progress still says where the file went.
    answer = await send(w, token, 0, len(data), b"x")
    assert (answer.status, answer.body["why"]) == (
        404,
        "This upload is complete (/home/up/data.bin); it takes no more chunks",
    )
    assert (await progress(w, token)).body["complete"] is True
    # A finished upload's session is read from disk when asked for, never kept in memory.
    assert w.transfers.store.cached(digest(token)) is None
    assert metric("ucim_instance_upload_bytes_total") - uploaded == len(data)
    assert metric("ucim_instance_transfers_total", kind="upload", outcome="completed") - completed == 1


async def test_an_empty_file_is_one_empty_chunk(world: World) -> None:
    token = await create_upload(world, "/home/up/empty")
    answer = await send(world, token, 0, 0, b"")
    assert answer.body["complete"] is True
    assert (world.home / "up" / "empty").read_bytes() == b""


async def test_offsets_append_rewrite_and_refuse_a_gap(world: World) -> None:
    w = world
    token = await create_upload(w, "/home/up/o.txt")
    assert (await send(w, token, -1, 10, b"AAAA")).body["offset"] == 4  # -1 appends
    assert (await send(w, token, -1, 10, b"BB")).body["offset"] == 6
    assert (await send(w, token, 2, 10, b"cc")).body["offset"] == 4  # rewrites from 2: the rest is sent again
    gap = await send(w, token, 9, 10, b"z")
    assert gap.status == 409
    assert gap.headers[CHUNKED_OFFSET_HEADER] == "4"
    assert gap.body["why"] == "The upload holds 4 bytes: send the chunk at offset 4, not 9"
    beyond = await send(w, token, 4, 10, b"0123456789")
    assert (beyond.status, beyond.body["why"]) == (400, "The chunk ends at byte 14, beyond the total size 10")
    answer = await send(w, token, 4, 10, b"DDDDDD")
    assert answer.body["complete"] is True
    assert (w.home / "up" / "o.txt").read_bytes() == b"AAccDDDDDD"


@pytest.mark.parametrize(
    ("headers", "status", "why"),
    [
        ({CHUNKED_TOKEN_HEADER: None}, 400, "The Chunked-Upload-Token header is missing"),
        ({CHUNKED_OFFSET_HEADER: None}, 400, "The Chunked-Upload-Offset header is missing"),
        ({CHUNKED_OFFSET_HEADER: "ten"}, 400, "The Chunked-Upload-Offset header is not a whole number: 'ten'"),
        ({CHUNKED_OFFSET_HEADER: "-2"}, 400, "The offset must be -1 or more, the sizes 0 or more"),
        ({CHUNKED_TOTAL_SIZE_HEADER: None}, 400, "The Chunked-Upload-Total-Size header is missing"),
        ({CHUNKED_TOTAL_SIZE_HEADER: "1e3"}, 400, "The Chunked-Upload-Total-Size header is not a whole number"),
        ({CHUNKED_TOKEN_HEADER: "x" * 43}, 404, "Unknown or expired upload token"),
        ({CHUNKED_TOKEN_HEADER: "not a token"}, 404, "Unknown or expired upload token"),
        ({CHUNKED_TOTAL_SIZE_HEADER: str(64 * MIB + 1)}, 413, "The file is larger than the 67108864 bytes"),
    ],
)
async def test_chunk_header_rules(world: World, headers: dict[str, str | None], status: int, why: str) -> None:
    token = await create_upload(world, "/home/up/h.txt")
    sent = {CHUNKED_TOKEN_HEADER: token, CHUNKED_OFFSET_HEADER: "0", CHUNKED_TOTAL_SIZE_HEADER: "3"}
    sent.update({k: v for k, v in headers.items() if v is not None})
    for name in [k for k, v in headers.items() if v is None]:
        del sent[name]
    async with world.client.post(UPLOAD_CHUNK_PATH, data=b"abc", headers=sent) as response:
        body = await response.json()
        assert (response.status, body["statusCode"]) == (status, status)
        assert body["why"].startswith(why), body["why"]
        assert response.headers["Access-Control-Allow-Origin"] == "*"


async def test_the_total_size_is_fixed_by_the_first_chunk(world: World) -> None:
    token = await create_upload(world, "/home/up/t.txt")
    assert (await send(world, token, 0, 6, b"abc")).status == 200
    answer = await send(world, token, 3, 7, b"def")
    assert (answer.status, answer.body["why"]) == (400, "This upload's total size is 6 bytes, not 7")


async def test_a_chunk_needs_a_content_length_and_at_most_32_mb(world: World) -> None:
    token = await create_upload(world, "/home/up/l.txt")

    async def streamed() -> AsyncIterator[bytes]:
        yield b"abc"

    headers = {CHUNKED_TOKEN_HEADER: token, CHUNKED_OFFSET_HEADER: "0", CHUNKED_TOTAL_SIZE_HEADER: "3"}
    async with world.client.post(UPLOAD_CHUNK_PATH, data=streamed(), headers=headers) as response:
        assert (response.status, (await response.json())["why"]) == (411, "A chunk needs a Content-Length")
    raw = await Raw.open(world, token, offset=0, total=64 * MIB, declared=MAX_CHUNK_BYTES + 1)
    answer = await raw.answer()
    await raw.close()
    assert (answer.status, answer.body["why"]) == (413, "A chunk may hold at most 32000000 bytes, not 32000001")


async def test_an_interrupted_chunk_keeps_its_data_and_the_upload_resumes(world: World) -> None:
    w = world
    data = os.urandom(4 * MIB)
    token = await create_upload(w, "/home/up/resumed.bin")
    assert (await send(w, token, 0, len(data), data[: 2 * MIB])).status == 200
    # The second chunk stops after 1.5 MiB: the client went away.
    body = data[2 * MIB : 3 * MIB + MIB // 2]
    raw = await Raw.open(w, token, offset=2 * MIB, total=len(data), declared=2 * MIB, body=body)

    async def first_mib_written() -> bool:
        return bool((await progress(w, token)).body["offset"] >= 3 * MIB)

    async def done_with_it() -> bool:
        return digest(token) not in w.transfers._busy

    await eventually(first_mib_written)
    await raw.close()
    await eventually(done_with_it)
    # What reached the disk is kept (aiohttp drops what it still had buffered when the connection went).
    kept = (await progress(w, token)).body["offset"]
    assert 3 * MIB <= kept <= 3 * MIB + MIB // 2
    assert not (w.home / "up" / "resumed.bin").exists()
    # A client that asks where to go on (after a crash, say) sends the rest from there ...
    more = 3 * MIB + MIB // 2 + 1000
    answer = await send(w, token, kept, len(data), data[kept:more])
    assert answer.body["offset"] == more
    assert sha256((w.home / "up" / f".ucim-upload-{digest(token)[:16]}.part").read_bytes()) == sha256(data[:more])
    # ... and one that re-sends the whole chunk from its offset ends with the same file.
    answer = await send(w, token, 2 * MIB, len(data), data[2 * MIB :])
    assert answer.body["complete"] is True, answer.body
    assert sha256((w.home / "up" / "resumed.bin").read_bytes()) == sha256(data)


async def test_a_stalled_chunk_is_cut_off_and_keeps_what_arrived(world: World) -> None:
    token = await create_upload(world, "/home/up/stalled.bin")
    raw = await Raw.open(world, token, offset=0, total=100, declared=100, body=b"x" * 40)
    answer = await raw.answer()
    await raw.close()
    assert answer.status == 408
    assert answer.headers["chunked-upload-offset"] == "40"
    assert answer.body["why"].startswith("No data arrived for 0.5 s; the 40 bytes of the chunk that did are kept")
    answer = await send_when_free(world, token, -1, 100, b"y" * 60)
    assert answer.body["complete"] is True
    assert (world.home / "up" / "stalled.bin").read_bytes() == b"x" * 40 + b"y" * 60


async def test_one_chunk_at_a_time(world: World) -> None:
    token = await create_upload(world, "/home/up/one.bin")
    raw = await Raw.open(world, token, offset=0, total=100, declared=50, body=b"x" * 10)
    await asyncio.sleep(0.1)
    answer = await send(world, token, 0, 100, b"y" * 50)
    assert (answer.status, answer.body["why"]) == (
        409,
        "Another chunk of this upload is being written; send one chunk at a time",
    )
    raw.writer.write(b"x" * 40)
    assert (await raw.answer()).body == {"offset": 50, "totalSize": 100, "complete": False, "id": None}
    await raw.close()


@pytest.mark.parametrize(
    ("policy", "final"),
    [("RENAME", "data(1).txt"), ("MERGE_RENAME", "data(1).txt"), ("REPLACE", "data.txt")],
)
async def test_completion_under_a_policy_that_always_finds_a_name(world: World, policy: str, final: str) -> None:
    token = await create_upload(world, "/home/up/data.txt", policy)
    (world.home / "up" / "data.txt").write_bytes(b"old")  # made while the upload ran
    answer = await send(world, token, 0, 3, b"new")
    assert answer.body == {"offset": 3, "totalSize": 3, "complete": True, "id": f"/home/up/{final}"}
    assert (world.home / "up" / final).read_bytes() == b"new"
    kept = {"RENAME": b"old", "MERGE_RENAME": b"old", "REPLACE": b"new"}[policy]
    assert (world.home / "up" / "data.txt").read_bytes() == kept


async def test_reject_keeps_the_data_when_the_name_was_taken_meanwhile(world: World) -> None:
    w = world
    token = await create_upload(w, "/home/up/data.txt", "REJECT")
    (w.home / "up" / "data.txt").write_bytes(b"theirs")
    answer = await send(w, token, 0, 4, b"mine")
    assert answer.status == 409
    assert answer.body["why"].startswith("'data.txt' already exists; the uploaded data is kept for 30 minutes")
    assert (w.home / "up" / "data.txt").read_bytes() == b"theirs"
    assert (await progress(w, token)).body == {"offset": 4, "totalSize": 4, "complete": False, "id": None}
    restarted = await w.new_transfers().upload_progress(token)  # the refused session was recorded on disk
    assert (restarted.offset, restarted.total_size, restarted.complete) == (4, 4, False)
    (w.home / "up" / "data.txt").unlink()
    answer = await send(w, token, 4, 4, b"")  # an empty chunk at the end finishes it
    assert answer.body["complete"] is True
    assert (w.home / "up" / "data.txt").read_bytes() == b"mine"


OTHER_HOME = {"id": "home", "providerGeneratedId": "home:someone-else"}


@pytest.mark.parametrize(
    ("item", "status", "why"),
    [
        (upload_item("/home/up/a", supportedProtocols=["WEBSOCKET_V2"]), 400, "CHUNKED protocol only; the request "
         "offers WEBSOCKET_V2"),
        (upload_item("/home/up/a", type="FOLDER", supportedProtocols=["CHUNKED"]), 400, "uploads folders with the "
         "WEBSOCKET_V2 protocol only; the request offers CHUNKED"),
        (upload_item("/home/nowhere/a"), 404, "/home/nowhere does not exist"),
        (upload_item("/home/up/exists"), 409, "/home/up/exists already exists"),
        (upload_item("/home/up/folder", "REPLACE"), 409, "/home/up/folder is a folder; a file cannot replace it"),
        (upload_item("/home"), 400, "/home is a whole drive: the upload needs a file in it"),
        (upload_item("/home/up/a", resolvedCollection=OTHER_HOME), 403, "is the home of another user"),
    ],
)  # fmt: skip
async def test_uploads_that_cannot_start(world: World, item: dict[str, Any], status: int, why: str) -> None:
    (world.home / "up" / "exists").write_bytes(b"")
    (world.home / "up" / "folder").mkdir()
    status_, answer = await post_json(world, FILES_UPLOAD_PATH, {"items": [upload_item("/home/up/fine"), item]})
    assert status_ == status
    assert answer["why"].startswith(f"Item 2 ({item['id']}): "), answer["why"]
    assert why in answer["why"]
    assert list(world.transfers.store.on_disk()) == []  # nothing was created for the valid first item either


async def test_each_item_gets_its_own_token_in_order(world: World) -> None:
    status, answer = await post_json(
        world, FILES_UPLOAD_PATH, {"items": [upload_item("/home/up/1"), upload_item("/home/up/2")]}
    )
    assert status == 200
    first, second = (item["token"] for item in answer["responses"])
    assert first != second
    assert (await send(world, second, 0, 1, b"2")).body["id"] == "/home/up/2"
    assert (await send(world, first, 0, 1, b"1")).body["id"] == "/home/up/1"
    assert await post_json(world, FILES_UPLOAD_PATH, {"items": []}) == (200, {})


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
async def test_a_folder_that_is_not_writable_is_refused_now(world: World) -> None:
    (world.home / "ro").mkdir(mode=0o555)
    status, answer = await post_json(world, FILES_UPLOAD_PATH, {"items": [upload_item("/home/ro/a")]})
    assert (status, answer["why"]) == (403, "Item 1 (/home/ro/a): permission denied: cannot write in /home/ro")


# --- sessions -------------------------------------------------------------------


async def test_sessions_are_files_named_by_the_token_hash_and_survive_a_restart(world: World) -> None:
    w = world
    token = await create_upload(w, "/home/up/restart.bin")
    assert (await send(w, token, 0, 6, b"abc")).status == 200
    folder = w.home / ".ucim" / "transfers"
    (session_file,) = folder.iterdir()
    assert session_file.name == f"{hashlib.sha256(token.encode()).hexdigest()}.json"
    assert token not in session_file.read_text()
    assert stat.S_IMODE(folder.stat().st_mode) == stat.S_IMODE((w.home / ".ucim").stat().st_mode) == 0o700
    assert stat.S_IMODE(session_file.stat().st_mode) == 0o600
    again = w.new_transfers()
    assert (await again.upload_progress(token)).offset == 3

    done = await again.write_chunk(token, offset=3, total_size=6, length=3, body=pieces(b"de", b"f"))
    assert (done.complete, done.id) == (True, "/home/up/restart.bin")
    assert (w.home / "up" / "restart.bin").read_bytes() == b"abcdef"
    finished = await w.new_transfers().upload_progress(token)  # a retried last chunk finds it complete
    assert (finished.complete, finished.id) == (True, "/home/up/restart.bin")


async def test_a_session_whose_activity_alone_changed_is_written_at_most_every_10_seconds(world: World) -> None:
    w = world
    token = await create_upload(w, "/home/up/often.bin")
    (session_file,) = (w.home / ".ucim" / "transfers").iterdir()

    def on_disk() -> dict[str, Any]:
        written: dict[str, Any] = json.loads(session_file.read_text())
        return written

    assert (await send(w, token, 0, 9, b"abc")).status == 200
    first = on_disk()
    assert first["total_size"] == 9  # a new total size is written at once
    w.clock.now += 5
    assert (await send(w, token, 3, 9, b"def")).status == 200
    assert on_disk() == first  # 5 s later: the activity is kept in memory only ...
    assert w.transfers.store.get(digest(token)).last_activity == first["last_activity"] + 5  # type: ignore[union-attr]
    w.clock.now += 6
    assert (await send(w, token, 6, 9, b"gh")).status == 200
    assert on_disk()["last_activity"] == first["last_activity"] + 11  # ... until it is 10 s old


async def test_an_idle_upload_expires_and_is_swept_with_its_data(world: World) -> None:
    w = world
    token = await create_upload(w, "/home/up/idle.bin")
    assert (await send(w, token, 0, 6, b"abc")).status == 200
    w.clock.now += 29 * 60
    assert (await progress(w, token)).status == 200
    assert await w.transfers.sweep() == 0
    w.clock.now += 2 * 60
    answer = await progress(w, token)
    assert (answer.status, answer.body["why"]) == (404, "Unknown or expired upload token")
    assert (await send(w, token, 3, 6, b"def")).status == 404
    expired = metric("ucim_instance_transfers_total", kind="upload", outcome="expired")
    assert await w.transfers.sweep() == 1
    assert metric("ucim_instance_transfers_total", kind="upload", outcome="expired") - expired == 1
    assert list((w.home / "up").iterdir()) == []
    assert list((w.home / ".ucim" / "transfers").iterdir()) == []


async def test_an_active_upload_still_ends_at_its_maximum_age(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    clock = Clock()
    (tmp_path / "up").mkdir()
    limits = TransferLimits(upload_idle_seconds=10, upload_max_age_seconds=25)
    transfers = make_transfers(tmp_path, clock, limits)
    w = World(await serve(aiohttp_client, transfers), tmp_path, transfers, clock)
    token = await create_upload(w, "/home/up/old.bin")
    for offset in range(4):
        assert (await send(w, token, offset, 10, b"x")).status == 200
        clock.now += 8
    assert (await send(w, token, 4, 10, b"x")).status == 404  # 32 s after it began, 8 s after its last chunk


async def test_expired_sessions_of_an_earlier_run_are_swept(world: World) -> None:
    w = world
    token = await create_upload(w, "/home/up/earlier.bin")
    assert (await send(w, token, 0, 6, b"abc")).status == 200
    await create_download(w, "/home/up/.ucim-upload-" + digest(token)[:16] + ".part")
    w.clock.now += 24 * 3600
    (w.home / ".ucim" / "transfers" / ".tmp-crashed").write_text("{")
    os.utime(w.home / ".ucim" / "transfers" / ".tmp-crashed", (0, 0))
    (w.home / ".ucim" / "transfers" / ("0" * 64 + ".json")).write_text("not json")
    again = w.new_transfers()
    assert await again.sweep() == 2
    assert list((w.home / ".ucim" / "transfers").iterdir()) == []
    assert list((w.home / "up").iterdir()) == []


async def test_a_sweep_reads_sessions_a_batch_at_a_time(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    w = world
    monkeypatch.setattr(transfers_module, "SWEEP_BATCH", 3)
    (w.home / "f.txt").write_bytes(b"data")
    old = [await create_download(w, "/home/f.txt") for _ in range(7)]
    w.clock.now += 15 * 60
    fresh = await create_download(w, "/home/f.txt")
    assert len(old) == 7
    assert await w.new_transfers().sweep() == 7  # three batches, the last one partly fresh
    (left,) = (w.home / ".ucim" / "transfers").iterdir()
    assert left.name == f"{digest(fresh)}.json"


async def test_a_sweep_cancelled_while_its_thread_reads_stops(world: World) -> None:
    transfers = world.new_transfers()
    reading, go_on = threading.Event(), threading.Event()

    def slow_disk() -> Iterator[tuple[str, Any]]:
        reading.set()
        go_on.wait(5)  # in the sweep's thread, while the sweep is cancelled
        yield from ()

    transfers.store.on_disk = slow_disk  # type: ignore[method-assign,assignment]
    sweeping = asyncio.create_task(transfers.sweep_forever())
    assert await asyncio.to_thread(reading.wait, 5)
    sweeping.cancel()
    try:
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(sweeping, 5)
    finally:
        go_on.set()


async def test_a_download_token_lives_15_minutes(world: World) -> None:
    (world.home / "f.txt").write_bytes(b"data")
    token = await create_download(world, "/home/f.txt")
    world.clock.now += 15 * 60
    async with world.client.get(DOWNLOAD_FILE_PATH, params={"token": token}) as response:
        assert (response.status, (await response.json())["why"]) == (404, "Unknown or expired download token")


async def test_the_store_never_holds_the_token(world: World) -> None:
    (world.home / "f.txt").write_bytes(b"data")
    token = await create_download(world, "/home/f.txt")
    ((key, session),) = list(world.transfers.store.on_disk())
    assert key == digest(token)
    assert token not in session.model_dump_json()


# --- downloads ------------------------------------------------------------------


async def test_a_download_is_served_once_with_its_name(world: World) -> None:
    data = os.urandom(100_000)
    (world.home / "résumé 1.pdf").write_bytes(data)
    served = metric("ucim_instance_download_bytes_total")
    token = await create_download(world, "/home/résumé 1.pdf")
    async with world.client.get(DOWNLOAD_FILE_PATH, params={"token": token}) as response:
        assert response.status == 200
        assert await response.read() == data
        assert response.headers["Content-Type"] == "application/pdf"
        assert response.headers["Content-Disposition"] == "attachment; filename*=UTF-8''r%C3%A9sum%C3%A9%201.pdf"
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert response.headers["Accept-Ranges"] == "bytes"
        assert response.headers["Content-Length"] == str(len(data))

    async def counted() -> bool:  # the handler counts once the last byte is out
        return metric("ucim_instance_download_bytes_total") - served == len(data)

    await eventually(counted)
    async with world.client.get(DOWNLOAD_FILE_PATH, params={"token": token}) as response:
        assert response.status == 404
    assert list(world.transfers.store.on_disk()) == []


async def test_two_concurrent_requests_with_one_token_one_wins(world: World) -> None:
    (world.home / "f.bin").write_bytes(os.urandom(1_000_000))
    token = await create_download(world, "/home/f.bin")

    async def fetch() -> int:
        async with world.client.get(DOWNLOAD_FILE_PATH, params={"token": token}) as response:
            await response.read()
            return response.status

    assert sorted(await asyncio.gather(fetch(), fetch(), fetch())) == [200, 404, 404]


DATA = bytes(range(256)) * 4  # 1024 bytes


@pytest.mark.parametrize(
    ("range_", "status", "body", "content_range"),
    [
        ("bytes=0-9", 206, DATA[:10], "bytes 0-9/1024"),
        ("bytes=-5", 206, DATA[-5:], "bytes 1019-1023/1024"),
        ("bytes=1000-", 206, DATA[1000:], "bytes 1000-1023/1024"),
        ("bytes=10-5000", 206, DATA[10:], "bytes 10-1023/1024"),
    ],
)
async def test_ranges(world: World, range_: str, status: int, body: bytes, content_range: str) -> None:
    (world.home / "r.bin").write_bytes(DATA)
    token = await create_download(world, "/home/r.bin")
    async with world.client.get(DOWNLOAD_FILE_PATH, params={"token": token}, headers={"Range": range_}) as response:
        assert (response.status, await response.read()) == (status, body)
        assert response.headers["Content-Range"] == content_range


@pytest.mark.parametrize("range_", ["bytes=1024-", "bytes=2000-3000", "bytes=0-1,5-6", "lines=1-2"])
async def test_an_unsatisfiable_range_is_416_and_leaves_the_token(world: World, range_: str) -> None:
    (world.home / "r.bin").write_bytes(DATA)
    token = await create_download(world, "/home/r.bin")
    async with world.client.get(DOWNLOAD_FILE_PATH, params={"token": token}, headers={"Range": range_}) as response:
        assert response.status == 416
        assert response.headers["Content-Range"] == "bytes */1024"
    async with world.client.get(DOWNLOAD_FILE_PATH, params={"token": token}) as response:
        assert (response.status, await response.read()) == (200, DATA)


async def test_if_range_and_conditional_requests(world: World) -> None:
    (world.home / "r.bin").write_bytes(DATA)
    token = await create_download(world, "/home/r.bin")
    stale = {"Range": "bytes=0-9", "If-Range": formatdate(0, usegmt=True)}  # changed since: the whole file
    async with world.client.head(DOWNLOAD_FILE_PATH, params={"token": token}) as response:
        assert response.status == 200  # a HEAD does not use the token up
        etag = response.headers["ETag"]
    async with world.client.get(DOWNLOAD_FILE_PATH, params={"token": token}, headers={"If-None-Match": etag}) as r:
        assert r.status == 304  # nothing sent: the token stays
    async with world.client.get(DOWNLOAD_FILE_PATH, params={"token": token}, headers=stale) as response:
        assert (response.status, await response.read()) == (200, DATA)
    async with world.client.get(DOWNLOAD_FILE_PATH, params={"token": token}) as response:
        assert response.status == 404


async def test_downloads_are_sent_with_sendfile(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(3 * MIB)
    (world.home / "big.bin").write_bytes(data)
    real = os.sendfile
    sent: list[int] = []

    def spy(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        done = real(out_fd, in_fd, offset, count)
        sent.append(done)
        return done

    monkeypatch.setattr(os, "sendfile", spy)
    token = await create_download(world, "/home/big.bin")
    headers = {"Range": f"bytes={MIB}-"}
    async with world.client.get(DOWNLOAD_FILE_PATH, params={"token": token}, headers=headers) as response:
        assert (response.status, await response.read()) == (206, data[MIB:])
    assert sum(sent) == 2 * MIB


async def test_a_link_swapped_in_after_the_token_is_refused(world: World) -> None:
    (world.home / "secret.txt").write_text("secret")
    (world.home / "sub").mkdir()
    (world.home / "sub" / "f.txt").write_text("fine")
    file_token = await create_download(world, "/home/sub/f.txt")
    folder_token = await create_download(world, "/home/sub/f.txt")
    (world.home / "sub" / "f.txt").unlink()
    (world.home / "sub" / "f.txt").symlink_to(world.home / "secret.txt")
    async with world.client.get(DOWNLOAD_FILE_PATH, params={"token": file_token}) as response:
        assert (response.status, (await response.json())["why"]) == (
            400,
            "/home/sub/f.txt is a symbolic link; links are not followed",
        )
    (world.home / "sub").rename(world.home / "real-sub")
    (world.home / "sub").symlink_to(world.home / "real-sub")
    async with world.client.get(DOWNLOAD_FILE_PATH, params={"token": folder_token}) as response:
        assert (response.status, (await response.json())["why"]) == (
            400,
            "/home/sub is a symbolic link; links are not followed",
        )


@pytest.mark.parametrize(
    ("path", "status", "why"),
    [
        ("/home/missing", 404, "/home/missing does not exist"),
        ("/home/folder", 400, "/home/folder is a folder; download the files in it one by one"),
        ("/home/link", 400, "/home/link is a symbolic link; links are not followed"),
        ("/home", 400, "/home is a whole drive: the download needs a file in it"),
        ("/home/../etc/passwd", 400, "the path contains '..'"),
    ],
)
async def test_downloads_that_cannot_start(world: World, path: str, status: int, why: str) -> None:
    (world.home / "folder").mkdir()
    (world.home / "link").symlink_to("/etc/passwd")
    answer = await post_json(world, FILES_DOWNLOAD_PATH, {"items": [{"id": path, "resolvedCollection": DRIVE}]})
    assert answer[0] == status
    assert answer[1]["why"] == f"Item 1 ({path}): {why}"


async def test_download_tokens_that_are_not_known(world: World) -> None:
    for params in ({}, {"token": ""}, {"token": "x" * 43}, {"token": "../../etc"}):
        async with world.client.get(DOWNLOAD_FILE_PATH, params=params) as response:
            assert response.status == 404
            assert response.headers["Access-Control-Allow-Origin"] == "*"


async def test_cors_preflight(world: World) -> None:
    for path in (UPLOAD_CHUNK_PATH, DOWNLOAD_FILE_PATH):
        async with world.client.options(path, headers={"Origin": "https://cloud.example"}) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            assert CHUNKED_TOKEN_HEADER in response.headers["Access-Control-Allow-Headers"]
            assert "POST" in response.headers["Access-Control-Allow-Methods"]


async def test_write_chunk_checks_sizes_before_it_looks_for_the_session(world: World) -> None:
    with pytest.raises(TransferRefusedError) as caught:
        await world.transfers.write_chunk("x" * 43, offset=0, total_size=1, length=MAX_CHUNK_BYTES + 1, body=pieces())
    assert caught.value.status == 413


async def test_the_warm_up_exercise_takes_every_path_and_leaves_a_finished_upload(world: World) -> None:
    base = f"http://{world.client.host}:{world.client.port}"
    await exercise(world.client.session, base, DRIVE)
    assert (world.home / "warm-up-upload.txt").read_bytes() == b"warm-up!"
    ((_, session),) = world.transfers.store.on_disk()  # the download was used; the upload stays, finished
    assert isinstance(session, UploadSession)
    assert session.final_id == "/home/warm-up-upload.txt"


def test_transfers_of_an_instance_follow_its_settings(tmp_path: Path) -> None:
    settings = SidecarSettings(transfer_folder=".x/t", upload_idle_seconds=5, upload_max_bytes=7)
    transfers = Transfers.for_instance(settings, DriveResolver(settings.drive_roots, USER, tmp_path))
    assert transfers.store.folder == tmp_path / ".x" / "t"
    assert (transfers.limits.upload_idle_seconds, transfers.limits.max_upload_bytes) == (5, 7)
    assert transfers.limits.download_lifetime_seconds == 15 * 60


def test_the_session_folder_is_made_private_but_existing_parents_are_left_alone(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    store = SessionStore(home / "a" / "b")
    store.save("0" * 64, DownloadSession(location=Location(drive="home", root=str(home), parts=("f",)), created_at=0))
    assert [stat.S_IMODE(p.stat().st_mode) for p in (home, home / "a", home / "a" / "b")] == [0o755, 0o700, 0o700]


async def test_a_partial_file_swapped_for_a_link_is_refused(world: World) -> None:
    token = await create_upload(world, "/home/up/swap.bin")
    assert (await send(world, token, 0, 6, b"abc")).status == 200
    partial = world.home / "up" / f".ucim-upload-{digest(token)[:16]}.part"
    partial.unlink()
    partial.symlink_to(world.home / "elsewhere")
    answer = await send(world, token, 3, 6, b"def")
    assert (answer.status, answer.body["why"]) == (
        400,
        "The partial file of the upload to /home/up/swap.bin is a symbolic link; links are not followed",
    )
    assert not (world.home / "elsewhere").exists()
