"""Folder uploads end to end: Core's ``files/upload`` of type FOLDER, then the browser's WEBSOCKET_V2 stream
through the gateway and the bridge to alice's own instance, which writes every file as alice.

Nested folders arrive byte-identical and alice's; every conflict policy does what it says; a stream cut
off mid-file leaves no half-file (and the same session then finishes, skipping what is there); hostile
names and links alice planted in the target write nothing outside it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from ucim.common.protocol import WriteConflictPolicy, encode_username
from ucim.testing.core_standin import CoreStandIn, ProviderCallError
from ucim.testing.folder_upload_client import FolderUploadResult, LocalFile
from ucim.testing.stack import Stack

pytestmark = pytest.mark.e2e

ALICE_UID = 1101
MTIME = 1_700_000_000_000


@pytest.fixture
def folder(stack: Stack) -> Iterator[str]:
    """A fresh folder in alice's home (hers), removed as alice afterwards."""
    name = f"ucim-e2e-{uuid.uuid4().hex[:8]}"
    stack.run_as("alice", "mkdir", f"/home/alice/{name}")
    yield name
    stack.run_as("alice", "rm", "-rf", f"/home/alice/{name}", check=False)


def tree() -> list[LocalFile]:
    """Nested folders, an empty file, and a file larger than one of the web client's 16 MB chunks."""
    files = [
        LocalFile(f"level-{i % 4}/deeper-{i % 3}/file-{i}.txt", f"line {i}\n".encode() * (i + 1), MTIME)
        for i in range(60)
    ]
    big = hashlib.sha256(b"big").digest() * ((17 << 20) // 32)
    return [*files, LocalFile("empty.txt", b"", MTIME), LocalFile("data/big.bin", big, MTIME)]


def stored(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` (read as root, on this frontend) by its relative path."""
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*") if path.is_file()}


async def upload(
    core: CoreStandIn, target: str, files: list[LocalFile], policy: WriteConflictPolicy, **options: object
) -> FolderUploadResult:
    created = await core.create_upload("alice", target, upload_type="FOLDER", conflict_policy=policy)
    assert created.protocol == "WEBSOCKET_V2"
    assert created.endpoint.startswith(("ws://", "wss://")) and "token=" in created.endpoint
    return await core.upload_folder(created, files, **options)


async def test_a_nested_folder_arrives_whole_and_is_alices(stack: Stack, folder: str) -> None:
    core = stack.core
    await core.connect("alice")
    home = core.home_of("alice")
    files = tree()
    result = await upload(core, f"/{home.id}/{folder}/tree", files, "RENAME")  # the web client's policy
    assert result.complete, result
    assert result.files_completed == len(files) and not result.skipped
    root = Path(f"/home/alice/{folder}/tree")
    assert stored(root) == {file.path: file.source for file in files}
    for path in [root, *root.rglob("*")]:
        assert path.stat().st_uid == ALICE_UID, path
    assert (root / "data/big.bin").stat().st_mtime == MTIME / 1000
    assert not [path.name for path in root.rglob(".ucim-*")]
    listed = await core.files_browse("alice", f"/{home.id}/{folder}/tree", sort_by="PATH")
    assert [item.id.rsplit("/", 1)[1] for item in listed.items] == [
        "data",
        "empty.txt",
        *(f"level-{i}" for i in range(4)),
    ]


async def test_every_conflict_policy(stack: Stack, folder: str) -> None:
    core = stack.core
    await core.connect("alice")
    home = core.home_of("alice")
    base = f"/home/alice/{folder}"
    stack.run_as("alice", "sh", "-c", f"mkdir {base}/t && printf old > {base}/t/a.txt && printf kept > {base}/t/k.txt")
    files = [LocalFile("a.txt", b"new", MTIME), LocalFile("sub/b.txt", b"b", MTIME)]

    with pytest.raises(ProviderCallError) as rejected:
        await upload(core, f"/{home.id}/{folder}/t", files, "REJECT")
    assert rejected.value.status == 409
    assert "already exists" in str(rejected.value)

    assert (await upload(core, f"/{home.id}/{folder}/t", files, "RENAME")).complete
    assert stored(Path(f"{base}/t(1)")) == {"a.txt": b"new", "sub/b.txt": b"b"}

    assert (await upload(core, f"/{home.id}/{folder}/t", files, "MERGE_RENAME")).complete
    assert stored(Path(f"{base}/t")) == {"a.txt": b"old", "a(1).txt": b"new", "k.txt": b"kept", "sub/b.txt": b"b"}

    replacing = [LocalFile("a.txt", b"newest", MTIME), LocalFile("sub/b.txt", b"bb", MTIME)]
    assert (await upload(core, f"/{home.id}/{folder}/t", replacing, "REPLACE")).complete
    assert stored(Path(f"{base}/t")) == {
        "a.txt": b"newest",
        "a(1).txt": b"new",
        "k.txt": b"kept",
        "sub/b.txt": b"bb",
    }
    fresh = await upload(core, f"/{home.id}/{folder}/fresh", files, "REJECT")
    assert fresh.complete
    assert stored(Path(f"{base}/fresh")) == {"a.txt": b"new", "sub/b.txt": b"b"}
    assert {Path(f"{base}/{name}").stat().st_uid for name in ("t", "t(1)", "fresh", "t/a.txt")} == {ALICE_UID}


async def test_an_interrupted_stream_leaves_no_half_file_and_the_session_resumes(stack: Stack, folder: str) -> None:
    core = stack.core
    await core.connect("alice")
    home = core.home_of("alice")
    files = tree()
    created = await core.create_upload("alice", f"/{home.id}/{folder}/cut", upload_type="FOLDER")
    small_bytes = sum(file.size for file in files if file.path != "data/big.bin")
    cut = await core.upload_folder(created, files, cut_after_bytes=small_bytes + (5 << 20))  # into big.bin
    assert not cut.complete
    root = Path(f"/home/alice/{folder}/cut")

    # The same session again (a reconnecting client): what is there is skipped, the rest arrives.
    resumed = await core.upload_folder(created, files)
    assert resumed.complete, resumed
    assert "data/big.bin" in resumed.accepted
    assert resumed.skipped  # the files that had arrived whole
    assert stored(root) == {file.path: file.source for file in files}
    assert not [path.name for path in root.rglob(".ucim-*")]


async def test_a_cut_stream_never_shows_a_partial_file(stack: Stack, folder: str) -> None:
    core = stack.core
    await core.connect("alice")
    home = core.home_of("alice")
    big = os.urandom(24 << 20)
    created = await core.create_upload("alice", f"/{home.id}/{folder}/part", upload_type="FOLDER")
    cut = await core.upload_folder(created, [LocalFile("big.bin", big, MTIME)], cut_after_bytes=20 << 20)
    assert not cut.complete
    root = Path(f"/home/alice/{folder}/part")
    for _ in range(100):  # the instance settles the connection right after the socket closes
        if not list(root.iterdir()):
            break
        await asyncio.sleep(0.1)
    assert list(root.iterdir()) == []


async def test_hostile_names_and_planted_links_write_nothing_outside(stack: Stack, folder: str) -> None:
    core = stack.core
    await core.connect("alice")
    home = core.home_of("alice")
    base = f"/home/alice/{folder}"
    outside = f"{base}/outside"
    stack.run_as(
        "alice",
        "sh",
        "-c",
        f"mkdir {outside} {base}/target && printf theirs > {outside}/secret"
        f" && ln -s {outside} {base}/target/linked && ln -s {outside}/secret {base}/target/secret",
    )
    hostile = ["../escape.txt", "/etc/ucim-escape", "a/../../escape2.txt", "a//b", "nul\x00.txt", "linked/secret"]
    files = [*(LocalFile(name, b"evil", MTIME) for name in hostile), LocalFile("fine.txt", b"fine", MTIME)]
    result = await upload(core, f"/{home.id}/{folder}/target", files, "MERGE_RENAME")
    assert result.complete
    assert result.skipped == set(hostile)
    assert result.accepted == {"fine.txt"}
    assert Path(f"{outside}/secret").read_bytes() == b"theirs"
    assert not Path("/etc/ucim-escape").exists()
    assert not Path(f"{base}/escape.txt").exists() and not Path("/home/alice/escape2.txt").exists()
    assert Path(f"{base}/target/fine.txt").read_bytes() == b"fine"
    assert Path(f"{base}/target/secret").is_symlink()  # a link in a file's place is a taken name: left as it is
    # A token sent to another user's instance means nothing there.
    created = await core.create_upload("alice", f"/{home.id}/{folder}/mine", upload_type="FOLDER")
    await core.connect("bob")
    to_bob = str(URL(created.endpoint).update_query(usernameHint=encode_username("bob")))
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await core.upload_folder(created.model_copy(update={"endpoint": to_bob}), files)
    assert refused.value.status == 404
