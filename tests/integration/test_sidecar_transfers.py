"""Uploads and downloads through real user instances, forked as alice and bob.

Alice uploads in two chunks, the second cut off mid-way (the connection is reset) and sent
again; the file is byte-identical and hers. Her tokens mean nothing to bob's instance, and a
download token serves one answer (a Range too).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.integration.instance_support import SIDECAR, Spawner, alice_home, as_alice, fork_server, session_for
from tests.support.platform import Platform
from ucim.common.instance_api import (
    CHUNKED_OFFSET_HEADER,
    CHUNKED_TOKEN_HEADER,
    CHUNKED_TOTAL_SIZE_HEADER,
    DOWNLOAD_FILE_PATH,
    FILES_DOWNLOAD_PATH,
    FILES_UPLOAD_PATH,
    UPLOAD_CHUNK_PATH,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

ALICE_UID = 1101
MIB = 1 << 20
SESSIONS = f".ucim-it-{uuid.uuid4().hex[:8]}"  # each run its own session folder, removed afterwards


def home_of(user: str) -> dict[str, str]:
    return {"id": "home", "providerGeneratedId": f"home:{user}"}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def spawner(platform: Platform) -> AsyncIterator[Spawner]:
    async with fork_server(platform, SIDECAR, transfer_folder=f"{SESSIONS}/transfers") as started:
        yield started
        late = [line for line in started.log.read_text().splitlines() if "imported after the fork" in line]
        assert not late, late
    for user in ("alice", "bob"):
        shutil.rmtree(Path(pwd.getpwnam(user).pw_dir) / SESSIONS, ignore_errors=True)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def alice(spawner: Spawner) -> str:
    return (await spawner.spawn("alice"))[1]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def bob(spawner: Spawner) -> str:
    return (await spawner.spawn("bob"))[1]


@pytest.fixture(scope="module")
def folder() -> Iterator[str]:
    """A folder of alice's, made by alice, with a read-only sub-folder."""
    name = f"ucim-it-transfers-{uuid.uuid4().hex[:8]}"
    path = alice_home() / name
    as_alice("mkdir", "-p", str(path / "read-only"))
    as_alice("chmod", "0500", str(path / "read-only"))
    yield name
    as_alice("chmod", "-R", "u+w", str(path))
    as_alice("rm", "-rf", str(path))


async def post(socket: str, route: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with session_for(socket) as session, session.post(route, json=body) as response:
        return response.status, await response.json()


async def new_upload(socket: str, path: str, drive: dict[str, str]) -> tuple[int, dict[str, Any]]:
    item = {"id": path, "supportedProtocols": ["CHUNKED"], "conflictPolicy": "REJECT", "resolvedCollection": drive}
    return await post(socket, FILES_UPLOAD_PATH, {"items": [item]})


def chunk_headers(token: str, offset: int, total: int) -> dict[str, str]:
    return {CHUNKED_TOKEN_HEADER: token, CHUNKED_OFFSET_HEADER: str(offset), CHUNKED_TOTAL_SIZE_HEADER: str(total)}


async def send(socket: str, token: str, offset: int, total: int, data: bytes) -> tuple[int, dict[str, Any]]:
    async with (
        session_for(socket) as session,
        session.post(UPLOAD_CHUNK_PATH, data=data, headers=chunk_headers(token, offset, total)) as response,
    ):
        return response.status, await response.json()


async def progress(socket: str, token: str) -> tuple[int, dict[str, Any]]:
    async with (
        session_for(socket) as session,
        session.get(UPLOAD_CHUNK_PATH, headers={CHUNKED_TOKEN_HEADER: token}) as response,
    ):
        return response.status, await response.json()


async def test_alice_uploads_in_two_chunks_resumes_after_a_reset_and_the_file_is_hers(
    alice: str, bob: str, folder: str
) -> None:
    data = os.urandom(4 * MIB + 4321)
    half = 2 * MIB
    status, created = await new_upload(alice, f"/home/{folder}/data.bin", home_of("alice"))
    assert status == 200, created
    token = created["responses"][0]["token"]
    assert await send(alice, token, 0, len(data), data[:half]) == (
        200,
        {"offset": half, "totalSize": len(data), "complete": False, "id": None},
    )
    # The second chunk: its first 1.5 MiB go out, then the connection is reset.
    _, writer = await asyncio.open_unix_connection(alice)
    head = "".join(f"{k}: {v}\r\n" for k, v in chunk_headers(token, half, len(data)).items())
    length = f"Content-Length: {len(data) - half}\r\n"
    writer.write(f"POST {UPLOAD_CHUNK_PATH} HTTP/1.1\r\nHost: instance\r\n{head}{length}\r\n".encode())
    writer.write(data[half : half + 3 * MIB // 2])
    await writer.drain()
    async with asyncio.timeout(10):
        while (await progress(alice, token))[1]["offset"] < half + MIB:  # noqa: ASYNC110 - the instance writes
            await asyncio.sleep(0.05)
    writer.transport.abort()
    # The instance kept what reached its disk, and never shows a partial file under the name.
    assert not (alice_home() / folder / "data.bin").exists()
    async with asyncio.timeout(10):
        while True:  # until the instance is done with the broken chunk: 409 until then
            status, answer = await send(alice, token, half, len(data), data[half:])
            if status != 409:
                break
            await asyncio.sleep(0.05)
    assert (status, answer) == (
        200,
        {"offset": len(data), "totalSize": len(data), "complete": True, "id": f"/home/{folder}/data.bin"},
    )
    written = alice_home() / folder / "data.bin"
    assert hashlib.sha256(written.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert (written.stat().st_uid, written.stat().st_gid) == (ALICE_UID, pwd.getpwnam("alice").pw_gid)
    assert [p.name for p in (alice_home() / folder).iterdir() if p.name.startswith(".ucim-upload-")] == []
    # Bob's instance knows nothing of alice's token.
    assert (await progress(bob, token))[0] == 404
    status, answer = await send(bob, token, 0, 1, b"x")
    assert (status, answer["why"]) == (404, "Unknown or expired upload token")


async def test_uploads_alice_and_bob_may_not_start(alice: str, bob: str, folder: str) -> None:
    status, answer = await new_upload(alice, f"/home/{folder}/read-only/a", home_of("alice"))
    assert (status, answer["why"]) == (
        403,
        f"Item 1 (/home/{folder}/read-only/a): permission denied: cannot write in /home/{folder}/read-only",
    )
    status, answer = await new_upload(bob, f"/home/{folder}/b", home_of("alice"))
    assert (status, answer["why"]) == (
        403,
        f"Item 1 (/home/{folder}/b): drive home (home:alice) is the home of another user",
    )


async def test_a_download_with_range_is_single_use(alice: str, bob: str, folder: str) -> None:
    data = os.urandom(300_000)
    (alice_home() / folder / "dl.bin").write_bytes(data)
    os.chown(alice_home() / folder / "dl.bin", ALICE_UID, pwd.getpwnam("alice").pw_gid)
    body = {"items": [{"id": f"/home/{folder}/dl.bin", "resolvedCollection": home_of("alice")}]}
    status, created = await post(alice, FILES_DOWNLOAD_PATH, body)
    assert status == 200, created
    token = created["responses"][0]["token"]
    async with session_for(bob) as session, session.get(DOWNLOAD_FILE_PATH, params={"token": token}) as response:
        assert response.status == 404  # bob's instance does not know it
    async with session_for(alice) as session:
        ranged = {"Range": "bytes=1000-1999"}
        async with session.get(DOWNLOAD_FILE_PATH, params={"token": token}, headers=ranged) as response:
            assert (response.status, await response.read()) == (206, data[1000:2000])
            assert response.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
            assert response.headers["Content-Disposition"] == "attachment; filename*=UTF-8''dl.bin"
        async with session.get(DOWNLOAD_FILE_PATH, params={"token": token}) as response:
            assert (response.status, (await response.json())["why"]) == (404, "Unknown or expired download token")
    status, created = await post(alice, FILES_DOWNLOAD_PATH, body)
    async with session_for(alice) as session:
        query = {"token": created["responses"][0]["token"]}
        async with session.get(DOWNLOAD_FILE_PATH, params=query) as response:
            assert (response.status, await response.read()) == (200, data)
        async with session.get(DOWNLOAD_FILE_PATH, params=query) as response:
            assert response.status == 404
