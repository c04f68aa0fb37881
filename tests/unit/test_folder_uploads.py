"""Folder uploads (WEBSOCKET_V2) on the instance's routes, on a temporary home, driven as the web client does."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpClient

from tests.unit.test_transfers import DRIVE, LIMITS, Client, Clock, make_transfers, post_json, serve
from ucim.common.instance_api import FILES_UPLOAD_PATH, FOLDER_UPLOAD_PATH
from ucim.common.upload_frames import Entry, encode_chunk, encode_listing
from ucim.testing.folder_upload_client import FolderUploadResult, LocalFile, upload_folder
from ucim.user_sidecar import folder_upload_io
from ucim.user_sidecar.transfers import Transfers

MTIME = 1_700_000_000_000
BIG = os.urandom(3 << 20)


class Home:
    def __init__(self, client: Client, home: Path, transfers: Transfers) -> None:
        self.client, self.home, self.transfers = client, home, transfers

    async def create(self, path: str, policy: str = "REJECT", status: int = 200) -> Any:
        item = {
            "id": path,
            "type": "FOLDER",
            "supportedProtocols": ["CHUNKED", "WEBSOCKET"],
            "conflictPolicy": policy,
            "resolvedCollection": DRIVE,
        }
        status_, answer = await post_json(self, FILES_UPLOAD_PATH, {"items": [item]})  # type: ignore[arg-type]
        assert status_ == status, answer
        return answer["responses"][0] if status == 200 else answer

    def endpoint(self, token: str) -> str:
        return str(self.client.make_url(FOLDER_UPLOAD_PATH).with_query(token=token))

    async def upload(
        self, path: str, files: list[LocalFile], policy: str = "REJECT", **options: Any
    ) -> FolderUploadResult:
        answer = await self.create(path, policy)
        assert answer["protocol"] == "WEBSOCKET_V2"
        return await upload_folder(self.endpoint(answer["token"]), files, session=self.client.session, **options)


@pytest.fixture
async def home(aiohttp_client: AiohttpClient, tmp_path: Path) -> Home:
    folder = tmp_path / "home"
    (folder / "up").mkdir(parents=True)
    transfers = make_transfers(folder, Clock(), LIMITS)
    return Home(await serve(aiohttp_client, transfers), folder, transfers)


def nested(count: int = 30) -> list[LocalFile]:
    files = [LocalFile(f"d{i % 3}/e{i % 2}/f{i}.txt", f"file {i}\n".encode() * (i + 1), MTIME) for i in range(count)]
    return [*files, LocalFile("empty", b"", MTIME), LocalFile("top.bin", BIG, MTIME)]


def stored(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()
    }


def leftovers(folder: Path) -> list[str]:
    return [path.name for path in folder.rglob(".ucim-*")]


async def test_nested_folders_arrive_byte_identical_with_their_mtimes(home: Home) -> None:
    files = nested()
    result = await home.upload("/home/up/tree", files, chunk_bytes=1 << 20)
    assert result.complete and result.files_completed == len(files)
    assert result.accepted == {file.path for file in files}
    assert result.completions_seen == sorted(result.completions_seen)  # cumulative progress
    folder = home.home / "up" / "tree"
    assert stored(folder) == {file.path: file.source for file in files}
    assert (folder / "top.bin").stat().st_mtime == MTIME / 1000
    assert stat.S_IMODE((folder / "d0/e0/f0.txt").stat().st_mode) == home.transfers.file_mode
    assert leftovers(folder) == []


async def test_a_file_already_there_is_skipped_on_reconnection(home: Home) -> None:
    answer = await home.create("/home/up/again", "REJECT")
    endpoint = home.endpoint(answer["token"])
    first = await upload_folder(endpoint, nested(4), session=home.client.session)
    assert first.complete
    second = await upload_folder(endpoint, nested(6), session=home.client.session)
    assert second.skipped == {file.path for file in nested(4)}  # the same size and mtime: not sent again
    assert second.accepted == {"d1/e0/f4.txt", "d2/e1/f5.txt"}
    assert stored(home.home / "up" / "again") == {file.path: file.source for file in nested(6)}


@pytest.mark.parametrize(
    ("policy", "folder", "inside"),
    [
        ("RENAME", "taken(1)", {"a.txt": b"new", "sub/b.txt": b"new b"}),
        ("MERGE_RENAME", "taken", {"a.txt": b"old", "a(1).txt": b"new", "keep.txt": b"kept", "sub/b.txt": b"new b"}),
        ("REPLACE", "taken", {"a.txt": b"new", "keep.txt": b"kept", "sub/b.txt": b"new b"}),
    ],
)
async def test_conflict_policies(home: Home, policy: str, folder: str, inside: dict[str, bytes]) -> None:
    taken = home.home / "up" / "taken"
    taken.mkdir()
    (taken / "a.txt").write_bytes(b"old")
    (taken / "keep.txt").write_bytes(b"kept")
    files = [LocalFile("a.txt", b"new", MTIME), LocalFile("sub/b.txt", b"new b", MTIME)]
    result = await home.upload("/home/up/taken", files, policy)
    assert result.complete
    assert stored(home.home / "up" / folder) == inside


async def test_reject_refuses_a_taken_folder_and_writes_no_file_over_another(home: Home) -> None:
    (home.home / "up" / "taken").mkdir()
    answer = await home.create("/home/up/taken", "REJECT", status=409)
    assert answer["why"] == "Item 1 (/home/up/taken): /home/up/taken already exists"
    # Someone makes the name after the upload began: the connection is refused before the upgrade.
    token = (await home.create("/home/up/late"))["token"]
    (home.home / "up" / "late").mkdir()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await upload_folder(home.endpoint(token), [LocalFile("x", b"1", MTIME)], session=home.client.session)
    assert refused.value.status == 409
    # Two files of one name: the first one stored keeps it, the other is not written.
    token = (await home.create("/home/up/fresh"))["token"]
    files = [LocalFile("x", b"1", MTIME), LocalFile("x", b"2", MTIME)]
    result = await upload_folder(home.endpoint(token), files, session=home.client.session)
    assert result.complete
    assert stored(home.home / "up" / "fresh") in ({"x": b"1"}, {"x": b"2"})
    assert leftovers(home.home / "up" / "fresh") == []


@pytest.mark.parametrize(
    "name",
    [
        "../escape",
        "/etc/passwd",
        "a/../../escape",
        "a//b",
        "nul\x00byte",
        ".",
        "",
        ".ucim-upload-x.part",
        "a/" + "n" * 300,
    ],
)
async def test_hostile_names_are_skipped_and_nothing_leaves_the_folder(home: Home, name: str) -> None:
    files = [LocalFile(name, b"evil", MTIME), LocalFile("fine.txt", b"fine", MTIME)]
    result = await home.upload("/home/up/target", files)
    assert result.complete
    assert result.skipped == {name}
    assert result.accepted == {"fine.txt"}
    assert stored(home.home / "up") == {"target/fine.txt": b"fine"}


async def test_links_planted_in_the_target_are_never_followed(home: Home, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"theirs")
    target = home.home / "up" / "target"
    target.mkdir()
    (target / "sub").symlink_to(outside)  # a folder's name is a link
    (target / "secret").symlink_to(outside / "secret")  # a file's name is a link
    files = [LocalFile("sub/secret", b"evil", MTIME), LocalFile("secret", b"mine", MTIME)]
    result = await home.upload("/home/up/target", files, "REPLACE")
    assert result.complete
    assert result.skipped == {"sub/secret"}
    assert (outside / "secret").read_bytes() == b"theirs"
    assert not (target / "secret").is_symlink() and (target / "secret").read_bytes() == b"mine"


async def test_an_interrupted_stream_leaves_no_half_file(home: Home) -> None:
    big = os.urandom(6 << 20)
    files = [LocalFile("small.txt", b"small", MTIME), LocalFile("big.bin", big, MTIME)]
    result = await home.upload("/home/up/cut", files, chunk_bytes=1 << 20, cut_after_bytes=(3 << 20) + 5)
    assert not result.complete
    folder = home.home / "up" / "cut"

    async def settled() -> bool:
        return leftovers(folder) == [] and not home.transfers._busy

    for _ in range(100):
        if await settled():
            break
        await asyncio.sleep(0.05)
    assert stored(folder) == {"small.txt": b"small"}  # the big file is not there, not even in part
    assert leftovers(folder) == []


async def test_protocol_violations_close_the_socket_with_why(home: Home) -> None:
    token = (await home.create("/home/up/bad"))["token"]
    async with home.client.session.ws_connect(home.endpoint(token)) as socket:
        await socket.send_bytes(encode_chunk(5, b"x"))
        message = await socket.receive()
    assert message.type == aiohttp.WSMsgType.CLOSE
    assert (message.data, message.extra) == (1008, "file 5 was never listed")
    async with home.client.session.ws_connect(home.endpoint(token)) as socket:
        (listing,) = encode_listing([Entry(1, 2, MTIME, "a"), Entry(1, 2, MTIME, "b")])
        await socket.send_bytes(listing)
        message = await socket.receive()
    assert message.extra == "file 1 is listed twice"


async def test_unknown_tokens_are_refused_before_the_upgrade(home: Home) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await upload_folder(home.endpoint("x" * 43), [], session=home.client.session)
    assert refused.value.status == 404
    async with home.client.get(FOLDER_UPLOAD_PATH, params={"token": "x" * 43}) as response:
        assert (await response.json())["why"] == "Unknown or expired upload token"


async def test_close_uses_the_session_up(home: Home) -> None:
    token = (await home.create("/home/up/closed"))["token"]
    result = await upload_folder(home.endpoint(token), nested(2), session=home.client.session, send_close=True)
    assert result.complete
    # The session ends a moment after CLOSE (on a loaded machine, more than a moment): wait for it, bounded.
    for _ in range(100):
        try:
            await upload_folder(home.endpoint(token), [], session=home.client.session)
        except aiohttp.WSServerHandshakeError as refused:
            assert refused.status == 404
            return
        await asyncio.sleep(0.05)
    pytest.fail("the session stayed open after CLOSE")


async def test_where_files_cannot_be_unnamed_named_partial_files_are_used_and_removed(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(folder_upload_io, "_unnamed", lambda _folder_fd: None)  # NFS and the like: no O_TMPFILE
    files = nested(6)
    result = await home.upload("/home/up/named", files, "REPLACE", chunk_bytes=1 << 20)
    assert result.complete
    assert stored(home.home / "up" / "named") == {file.path: file.source for file in files}
    cut = await home.upload(
        "/home/up/cut", [LocalFile("big.bin", BIG, MTIME)], chunk_bytes=1 << 20, cut_after_bytes=1 << 20
    )
    assert not cut.complete
    for _ in range(100):
        if not home.transfers._busy and not leftovers(home.home / "up" / "cut"):
            break
        await asyncio.sleep(0.05)
    assert stored(home.home / "up" / "cut") == {}
    assert leftovers(home.home / "up") == []


async def test_data_before_the_ok_breaks_the_protocol(home: Home) -> None:
    token = (await home.create("/home/up/eager"))["token"]
    async with home.client.session.ws_connect(home.endpoint(token)) as socket:
        (listing,) = encode_listing([Entry(i, 2, MTIME, f"f{i}") for i in range(200)])
        await socket.send_bytes(listing)
        await socket.send_bytes(encode_chunk(199, b"ab"))  # the 200th file cannot be open yet: 64 at a time
        message = await socket.receive()
        while message.type == aiohttp.WSMsgType.BINARY:
            message = await socket.receive()
    assert (message.data, message.extra) == (1008, "data for file 199 before its OK")
    assert leftovers(home.home / "up" / "eager") == []
