"""Files end to end: Core → gateway → bridge ingress → the user's own instance → the user's home.

Connections first (a user who is not connected gets the protocol's answer, connects, and then
works), then the files API and transfers as alice and bob: the files are theirs (their uid),
one user's drive and tokens mean nothing to the other, an interrupted upload resumes into a
byte-identical file, and a 2 GiB upload and download leave the gateway's and the bridge's
memory flat.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from ucim.common.instance_api import CHUNKED_OFFSET_HEADER, CHUNKED_TOKEN_HEADER, CHUNKED_TOTAL_SIZE_HEADER
from ucim.common.protocol import FilesCreateUploadResponseItem, encode_username
from ucim.testing.core_standin import CoreStandIn, ProviderCallError
from ucim.testing.memory import ResidentPeaks
from ucim.testing.stack import Stack

pytestmark = pytest.mark.e2e

MIB = 1 << 20


@pytest.fixture
def folder(stack: Stack) -> Iterator[str]:
    """A fresh folder name in alice's home, removed (as alice) afterwards."""
    name = f"ucim-e2e-{uuid.uuid4().hex[:8]}"
    yield name
    stack.run_as("alice", "rm", "-rf", f"/home/alice/{name}", check=False)


def pattern(size: int, seed: bytes = b"ucim") -> bytes:
    """Bytes that differ from offset to offset, so a chunk written at the wrong place shows."""
    block = hashlib.sha256(seed).digest() * 128 + bytes(range(256)) * 16  # 8 KiB, not a power-of-two pattern
    return (block * (size // len(block) + 1))[:size]


def with_hint(endpoint: str, username: str) -> str:
    """The endpoint with its usernameHint naming another user."""
    url = URL(endpoint)
    return str(url.update_query(usernameHint=encode_username(username)))


async def not_ready_answer(core: CoreStandIn, username: str) -> int:
    """The status of one user-routed call, without Core's init-and-retry loop."""
    attempts, core.init_retry_attempts = core.init_retry_attempts, 0
    try:
        body = {"items": [{"id": "/0/x", "conflictPolicy": "REJECT", "resolvedCollection": {"id": "0"}}]}
        return (await core.call_provider("POST", "files/folder", body, username)).status
    finally:
        core.init_retry_attempts = attempts


# --- connections -------------------------------------------------------------------------


async def test_init_connects_a_new_user_who_then_works(stack: Stack, folder: str) -> None:
    """As UCloud/IM does by default: the first init connects the user, and their home becomes a drive."""
    core = stack.core
    assert (await core.retrieve_manifest()).enabled
    assert core.drives_of("alice") == []
    assert await not_ready_answer(core, "alice") == 449

    (await core.call_provider("POST", "integration/init", {"username": "alice"})).raise_for_status()
    home = core.home_of("alice")
    assert home.provider_generated_id == "home:alice"
    created = await core.files_call("alice", "folder", [{"id": f"/{home.id}/{folder}", "conflictPolicy": "REJECT"}])
    assert created.ok, created.body
    assert stack.owner_uid(f"/home/alice/{folder}") == 1101


@pytest.mark.local_platform
@pytest.mark.stack_settings({"ucim-gateway": {"UCIM_GATEWAY_AUTO_CONNECT": "false"}})
async def test_a_user_not_connected_is_refused_until_connected(stack: Stack, folder: str) -> None:
    core = stack.core
    assert await not_ready_answer(core, "alice") == 449
    init = await core.call_provider("POST", "integration/init", {"username": "alice"})
    assert init.status == 403
    assert init.body["why"] == "The user alice is not connected to this provider; connect through UCloud first"
    assert "uconn" not in stack.kubectl("get", "uconn", "-n", stack.namespace, "-o", "name").stdout

    assert (await core.connect("alice")).redirect_to
    assert core.record.approved_connections == ["alice"]
    home = core.home_of("alice")
    created = await core.files_call("alice", "folder", [{"id": f"/{home.id}/{folder}", "conflictPolicy": "REJECT"}])
    assert created.ok, created.body
    assert stack.owner_uid(f"/home/alice/{folder}") == 1101


# --- the files API -----------------------------------------------------------------------


async def test_alice_works_on_her_files_with_every_conflict_policy(stack: Stack, folder: str) -> None:
    core = stack.core
    await core.connect("alice")
    home = f"/{core.home_of('alice').id}"
    base = f"{home}/{folder}"

    async def call(operation: str, *items: dict[str, str]) -> None:
        answer = await core.files_call("alice", operation, list(items))
        assert answer.ok, (operation, answer.body)

    await call("folder", {"id": base, "conflictPolicy": "REJECT"})
    rejected = await core.files_call("alice", "folder", [{"id": base, "conflictPolicy": "REJECT"}])
    assert rejected.status == 409, rejected.body
    stack.run_as("alice", "sh", "-c", f"cd /home/alice/{folder} && printf one > a.txt && printf two > b.txt")

    await call("copy", {"oldId": f"{base}/a.txt", "newId": f"{base}/b.txt", "conflictPolicy": "RENAME"})
    assert stack.read_file(f"/home/alice/{folder}/b.txt") == "two"
    assert stack.read_file(f"/home/alice/{folder}/b(1).txt") == "one"
    await call("copy", {"oldId": f"{base}/a.txt", "newId": f"{base}/b.txt", "conflictPolicy": "REPLACE"})
    assert stack.read_file(f"/home/alice/{folder}/b.txt") == "one"
    await call("folder", {"id": f"{base}/sub", "conflictPolicy": "REJECT"})
    await call("copy", {"oldId": f"{base}/a.txt", "newId": f"{base}/sub/a.txt", "conflictPolicy": "REJECT"})
    await call("copy", {"oldId": f"{base}/sub", "newId": f"{base}/sub", "conflictPolicy": "RENAME"})
    # MERGE_RENAME merges the folders and renames what clashes inside.
    await call("copy", {"oldId": f"{base}/sub", "newId": f"{base}/sub(1)", "conflictPolicy": "MERGE_RENAME"})
    await call("move", {"oldId": f"{base}/b(1).txt", "newId": f"{base}/c.txt", "conflictPolicy": "REJECT"})

    names = [item.id.rsplit("/", 1)[1] for item in (await core.files_browse("alice", base, sort_by="PATH")).items]
    assert names == ["a.txt", "b.txt", "c.txt", "sub", "sub(1)"]
    merged = (await core.files_browse("alice", f"{base}/sub(1)", sort_by="PATH")).items
    assert [item.id.rsplit("/", 1)[1] for item in merged] == ["a(1).txt", "a.txt"]
    assert stack.read_file(f"/home/alice/{folder}/c.txt") == "one"  # the renamed copy, moved
    assert stack.owner_uid(f"/home/alice/{folder}/sub(1)/a(1).txt") == 1101

    await call("trash", {"id": f"{base}/c.txt"})
    assert stack.read_file("/home/alice/Trash/c.txt") == "one"
    await call("emptyTrash", {"id": f"{home}/Trash"})
    assert (await core.files_browse("alice", f"{home}/Trash")).items == []
    await call("delete", {"id": f"{base}/sub(1)"})
    assert not stack.exists(f"/home/alice/{folder}/sub(1)")


async def test_bob_cannot_use_alices_drive_or_her_tokens(stack: Stack, folder: str) -> None:
    core = stack.core
    await core.connect("alice")
    await core.connect("bob")
    alice_home = core.home_of("alice")
    response = await core.files_browse_call("bob", f"/{alice_home.id}")
    assert response.status == 403, response.body
    assert "home:alice" in response.body["why"]

    await core.files_call("alice", "folder", [{"id": f"/{alice_home.id}/{folder}", "conflictPolicy": "REJECT"}])
    upload = await core.create_upload("alice", f"/{alice_home.id}/{folder}/secret.txt")
    # Alice's token sent to bob's instance (the endpoint's usernameHint names bob) means nothing there.
    to_bob = upload.model_copy(update={"endpoint": with_hint(upload.endpoint, "bob")})
    as_bob = await core.upload(to_bob, b"from bob", "bob")
    assert as_bob.status == 404, as_bob.body
    assert as_bob.json()["why"] == "Unknown or expired upload token"
    assert not stack.exists(f"/home/alice/{folder}/secret.txt")


# --- transfers ---------------------------------------------------------------------------


async def test_alice_uploads_and_downloads_with_ranges(stack: Stack, folder: str) -> None:
    core = stack.core
    await core.connect("alice")
    home = core.home_of("alice")
    stack.run_as("alice", "mkdir", f"/home/alice/{folder}")
    upload = await core.create_upload("alice", f"/{home.id}/{folder}/data.bin")
    assert upload.protocol == "CHUNKED"
    data = pattern(MIB + 4)  # three chunks
    answer = await core.upload(upload, data, "alice", chunk_size=400_000)
    assert answer.ok, answer.body
    assert stack.owner_uid(f"/home/alice/{folder}/data.bin") == 1101

    download = await core.create_download("alice", f"/{home.id}/{folder}/data.bin")
    part = await core.download(download.endpoint, {"Range": "bytes=100-199"})
    assert part.status == 206 and part.body == data[100:200]
    again = await core.download(download.endpoint)
    assert again.status == 404, "a download token serves one answer"
    download = await core.create_download("alice", f"/{home.id}/{folder}/data.bin")
    assert await core.download_digest(download.endpoint) == (200, len(data), hashlib.sha256(data).hexdigest())


async def test_an_interrupted_upload_resumes_into_an_identical_file(stack: Stack, folder: str) -> None:
    core = stack.core
    await core.connect("alice")
    home = core.home_of("alice")
    stack.run_as("alice", "mkdir", f"/home/alice/{folder}")
    target = f"/home/alice/{folder}/resumed.bin"
    upload = await core.create_upload("alice", f"/{home.id}/{folder}/resumed.bin")
    data = pattern(24 * MIB, seed=b"resume")

    # The browser sends a 16 MiB chunk and the connection breaks after 5 MiB of it.
    headers = {
        CHUNKED_TOKEN_HEADER: upload.token,
        CHUNKED_OFFSET_HEADER: "0",
        CHUNKED_TOTAL_SIZE_HEADER: str(len(data)),
        "Content-Length": str(16 * MIB),
        "UCloud-Username": encode_username("alice"),
    }

    async def breaks_off() -> AsyncIterator[bytes]:
        for start in range(0, 5 * MIB, MIB):
            yield data[start : start + MIB]
        await asyncio.sleep(0.5)  # the pieces reach the instance before the connection goes
        raise ConnectionResetError("the browser's connection broke")

    async with aiohttp.ClientSession() as session:
        with pytest.raises((aiohttp.ClientError, ConnectionResetError)):
            async with session.post(upload.endpoint, data=breaks_off(), headers=headers) as response:
                await response.read()
    assert not stack.exists(target), "an unfinished upload is never shown under its name"

    progress = await _settled_progress(core, upload)
    assert 0 < progress["offset"] <= 5 * MIB and not progress["complete"]
    answer = await core.upload(upload, data, "alice", offset=progress["offset"])
    assert answer.ok, answer.body
    assert answer.json()["complete"]
    download = await core.create_download("alice", f"/{home.id}/{folder}/resumed.bin")
    assert await core.download_digest(download.endpoint) == (200, len(data), hashlib.sha256(data).hexdigest())


async def _settled_progress(core: CoreStandIn, upload: FilesCreateUploadResponseItem) -> dict[str, int | bool]:
    """The upload's progress once the broken chunk is let go (the instance finishes it when the body ends)."""
    async with asyncio.timeout(30):
        while True:
            answer = await core.upload_progress(upload, "alice")
            if answer.ok:
                progress: dict[str, int | bool] = answer.json()
                return progress
            assert answer.status == 409, answer.body  # a chunk still being written
            await asyncio.sleep(0.1)


# --- memory under a large transfer (local processes: their memory is read from /proc) ----------


@pytest.fixture
def two_gib_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A 2 GiB file of non-repeating-per-MiB data, and its SHA-256."""
    path = tmp_path_factory.mktemp("upload") / "two-gib.bin"
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for index in range(2048):
            piece = pattern(MIB, seed=index.to_bytes(4, "big"))
            digest.update(piece)
            out.write(piece)
    yield path, digest.hexdigest()
    path.unlink()


@pytest.mark.local_platform
async def test_a_2_gib_upload_and_download_keep_gateway_and_bridge_memory_flat(
    stack: Stack, folder: str, two_gib_file: tuple[Path, str]
) -> None:
    source, digest = two_gib_file
    core = stack.core
    await core.connect("alice")
    home = core.home_of("alice")
    stack.run_as("alice", "mkdir", f"/home/alice/{folder}")
    file_id = f"/{home.id}/{folder}/big.bin"
    upload = await core.create_upload("alice", file_id)
    pids = {name: stack.components[f"ucim-{name}"].process.pid for name in ("gateway", "bridge")}

    async with ResidentPeaks(pids) as watch:
        answer = await core.upload(upload, source, "alice")
        assert answer.ok, answer.body
        download = await core.create_download("alice", file_id)
        assert await core.download_digest(download.endpoint) == (200, 2048 * MIB, digest)

    assert stack.owner_uid(f"/home/alice/{folder}/big.bin") == 1101
    # Flat: the 2 GiB pass through in pieces of about a MiB; a few buffers' worth of growth is allowed.
    growth = watch.growth()
    print("resident memory growth:", {k: f"{v / MIB:.1f} MiB" for k, v in growth.items()})
    assert all(grown < 48 * MIB for grown in growth.values()), {k: f"{v / MIB:.1f} MiB" for k, v in growth.items()}


async def test_a_file_that_is_not_there_is_a_readable_404(stack: Stack) -> None:
    core = stack.core
    await core.connect("alice")
    home = core.home_of("alice")
    with pytest.raises(ProviderCallError) as missing:
        await core.create_download("alice", f"/{home.id}/no-such-file-{uuid.uuid4().hex[:6]}")
    assert missing.value.status == 404
    assert "no-such-file" in str(missing.value)
