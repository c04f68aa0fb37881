"""Files through real user instances, forked as alice and bob: browse, retrieve, file operations, denial, links.

Drives come from the requests, as Core sends them: ``home`` is the caller's ``home:<user>``;
``42`` is ``project:ucimproj``, rooted (``drive_roots``) in a folder under the platform's run
dir that is alice's private 0700 folder, so bob's instance reaches it and the OS says no.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.integration.instance_support import SIDECAR, Spawner, alice_home, as_alice, fork_server, session_for
from tests.support.platform import Platform

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


ALICE_UID = 1101
PROJECT = {"id": "42", "providerGeneratedId": "project:ucimproj"}


def home_of(user: str) -> dict[str, str]:
    return {"id": "home", "providerGeneratedId": f"home:{user}"}


@pytest.fixture(scope="module")
def projects(platform: Platform) -> Iterator[Path]:
    """``<run dir>/it-projects-*/ucimproj``: the project folder, alice's alone (0700)."""
    base = Path(platform.env["UCIM_RUN_DIR"]) / f"it-projects-{uuid.uuid4().hex[:8]}"
    base.mkdir()
    base.chmod(0o755)
    folder = base / "ucimproj"
    folder.mkdir()
    os.chown(folder, ALICE_UID, ALICE_UID)
    folder.chmod(0o700)
    yield folder
    shutil.rmtree(base)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def spawner(platform: Platform, projects: Path) -> AsyncIterator[Spawner]:
    roots = {"home": "~", "project": str(projects.parent / "{name}")}
    async with fork_server(platform, SIDECAR, drive_roots=roots) as started:
        yield started


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def alice(spawner: Spawner) -> str:
    return (await spawner.spawn("alice"))[1]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def bob(spawner: Spawner) -> str:
    return (await spawner.spawn("bob"))[1]


@pytest.fixture(scope="module")
def folder() -> Iterator[str]:
    """A folder in alice's home, made by alice: two files, a sub-folder and a link to /etc."""
    name = f"ucim-it-files-{uuid.uuid4().hex[:8]}"
    path = alice_home() / name
    as_alice("mkdir", "-p", str(path / "sub"))
    as_alice("sh", "-c", f'printf 12345 > "{path}/data.txt"; : > "{path}/.hidden"; ln -s /etc "{path}/etc"')
    yield name
    as_alice("rm", "-rf", str(path))


async def post(socket: str, route: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with session_for(socket) as session, session.post(route, json=body) as response:
        return response.status, await response.json()


def browse(path: str, drive: dict[str, str] | None = None, **request: Any) -> dict[str, Any]:
    flags = request.pop("flags", {})
    return {"resolvedCollection": drive or home_of("alice"), "Browse": {"flags": {"path": path, **flags}, **request}}


def retrieve(file_id: str, drive: dict[str, str] | None = None) -> dict[str, Any]:
    return {"resolvedCollection": drive or home_of("alice"), "retrieve": {"id": file_id, "flags": {}}}


def items(*entries: dict[str, Any], drive: dict[str, str] | None = None) -> dict[str, Any]:
    return {"items": [{"resolvedCollection": drive or home_of("alice"), **entry} for entry in entries]}


def moving(old: str, new: str, policy: str, drive: dict[str, str] | None = None) -> dict[str, Any]:
    drives = {"resolvedOldCollection": drive or home_of("alice"), "resolvedNewCollection": drive or home_of("alice")}
    return {"items": [{**drives, "oldId": old, "newId": new, "conflictPolicy": policy}]}


async def test_alice_browses_her_home(alice: str, folder: str) -> None:
    status, page = await post(alice, "/files/browse", browse(f"/home/{folder}"))
    assert status == 200, page
    ids = [item["id"] for item in page["items"]]
    assert ids == [f"/home/{folder}/{name}" for name in [".hidden", "data.txt", "etc", "sub"]]
    by_id = {item["id"]: item for item in page["items"]}
    data = by_id[f"/home/{folder}/data.txt"]["status"]
    assert data["type"] == "FILE"
    assert data["sizeInBytes"] == 5
    assert data["unixOwner"] == pwd.getpwnam("alice").pw_uid
    assert by_id[f"/home/{folder}/sub"]["status"]["type"] == "DIRECTORY"
    status, hidden = await post(alice, "/files/browse", browse(f"/home/{folder}", flags={"filterHiddenFiles": True}))
    assert [item["id"].rsplit("/", 1)[1] for item in hidden["items"]] == ["data.txt", "etc", "sub"]
    status, paged = await post(alice, "/files/browse", browse(f"/home/{folder}", itemsPerPage=2, sortBy="SIZE"))
    assert status == 200
    assert len(paged["items"]) == 2
    assert paged["next"]
    status, found = await post(
        alice, "/files/retrieve", retrieve(f"/17/{folder}/data.txt", {**home_of("alice"), "id": "17"})
    )
    assert (status, found["id"], found["status"]["sizeInBytes"]) == (200, f"/17/{folder}/data.txt", 5)


async def test_bob_is_denied_alice_home(bob: str, folder: str) -> None:
    status, error = await post(bob, "/files/browse", browse(f"/home/{folder}"))
    assert (status, error["why"]) == (403, "Drive home (home:alice) is the home of another user")
    status, error = await post(bob, "/files/retrieve", retrieve(f"/home/{folder}/data.txt"))
    assert (status, error["statusCode"]) == (403, 403)
    # His own home is his.
    status, page = await post(bob, "/files/browse", browse("/home", home_of("bob")))
    assert status == 200, page


async def test_a_link_to_etc_is_refused(alice: str, folder: str) -> None:
    for body, route in [
        (browse(f"/home/{folder}/etc"), "/files/browse"),
        (retrieve(f"/home/{folder}/etc/passwd"), "/files/retrieve"),
        (browse(f"/home/{folder}/etc/ssh"), "/files/browse"),
    ]:
        status, error = await post(alice, route, body)
        assert status == 400
        assert error["why"] == f"/home/{folder}/etc is a symbolic link; links are not followed"
    # The link itself is described, not what it points to.
    status, link = await post(alice, "/files/retrieve", retrieve(f"/home/{folder}/etc"))
    assert (status, link["status"]["type"], link["status"]["sizeInBytes"]) == (200, "FILE", 4)


async def test_traversal_is_refused_by_a_real_instance(alice: str) -> None:
    for path, why in [
        ("/home/../bob", "The path contains '..'"),
        ("/home//etc", "The path has an empty component"),
        ("/home/a\x00b", "The path contains a NUL byte"),
        ("/etc/passwd", "/etc/passwd is not in drive home"),
    ]:
        status, error = await post(alice, "/files/browse", browse(path))
        assert status == 400
        assert error["why"].startswith(why)


async def test_alice_works_on_her_files(alice: str, folder: str) -> None:
    """Every operation, as alice in her home: what she makes is hers, made with the instance's umask."""
    base = f"/home/{folder}"
    path = alice_home() / folder
    ok: tuple[int, dict[str, Any]] = (200, {"responses": [{}]})
    assert await post(alice, "/files/folder", items({"id": f"{base}/new", "conflictPolicy": "REJECT"})) == ok
    made = (path / "new").stat()
    assert (made.st_uid, stat.S_IMODE(made.st_mode)) == (ALICE_UID, 0o770)
    status, error = await post(alice, "/files/folder", items({"id": f"{base}/new", "conflictPolicy": "REJECT"}))
    assert (status, error["why"]) == (409, f"Item 1 ({base}/new): 'new' already exists")
    status, error = await post(alice, "/files/copy", moving(base, f"{base}/new/copy", "REJECT"))
    assert (status, error["why"]) == (
        400,
        f"Item 1 ({base} -> {base}/new/copy): cannot copy {base} into itself ({base}/new/copy)",
    )
    # The link to /etc is copied as a link, never followed.
    for name in ("sub", "etc", "data.txt"):
        assert await post(alice, "/files/copy", moving(f"{base}/{name}", f"{base}/new/{name}", "REJECT")) == ok
    assert (path / "new" / "etc").readlink() == Path("/etc")
    copied = path / "new" / "data.txt"
    assert (copied.read_text(), copied.stat().st_uid) == ("12345", ALICE_UID)
    assert await post(alice, "/files/move", moving(f"{base}/new/data.txt", f"{base}/data.txt", "RENAME")) == ok
    assert sorted(p.name for p in path.iterdir()) == [".hidden", "data(1).txt", "data.txt", "etc", "new", "sub"]
    # Trash (made when first needed, in the drive root), empty it; delete for good.
    assert await post(alice, "/files/move", moving(f"{base}/data(1).txt", f"{base}/{folder}.txt", "REJECT")) == ok
    assert await post(alice, "/files/trash", items({"id": f"{base}/{folder}.txt"})) == ok
    assert (alice_home() / "Trash" / f"{folder}.txt").read_text() == "12345"
    # A delete as Core sends it: a UFile, its drive by id only (known from the calls before).
    ufile = {"id": f"{base}/new", "specification": {"collection": "home", "product": None}}
    assert await post(alice, "/files/delete", {"items": [ufile]}) == ok
    assert sorted(p.name for p in path.iterdir()) == [".hidden", "data.txt", "etc", "sub"]
    assert await post(alice, "/files/emptyTrash", items({"id": "/home/Trash"})) == ok
    assert list((alice_home() / "Trash").iterdir()) == []
    assert Path("/etc/passwd").exists()


async def test_bob_cannot_touch_alice_files(alice: str, bob: str, projects: Path) -> None:
    """The project folder is alice's private one: bob's instance reaches it, the OS refuses every call."""
    status, body = await post(
        alice, "/files/folder", items({"id": "/42/mine", "conflictPolicy": "REJECT"}, drive=PROJECT)
    )
    assert status == 200, body
    as_alice("sh", "-c", f'printf secret > "{projects}/mine/file.txt"')
    denied = [
        ("/files/browse", browse("/42/mine", PROJECT)),
        ("/files/retrieve", retrieve("/42/mine/file.txt", PROJECT)),
        ("/files/folder", items({"id": "/42/mine/bobs", "conflictPolicy": "REJECT"}, drive=PROJECT)),
        ("/files/copy", moving("/42/mine/file.txt", "/42/mine/copy.txt", "RENAME", PROJECT)),
        ("/files/move", moving("/42/mine/file.txt", "/42/stolen.txt", "RENAME", PROJECT)),
        ("/files/trash", items({"id": "/42/mine/file.txt"}, drive=PROJECT)),
        ("/files/emptyTrash", items({"id": "/42"}, drive=PROJECT)),
        ("/files/delete", items({"id": "/42/mine"}, drive=PROJECT)),
        ("/files/delete", items({"id": "/home/Trash"})),  # home:alice on bob's instance
    ]
    for route, body in denied:
        status, error = await post(bob, route, body)
        assert (status, error["statusCode"]) == (403, 403), (route, error)
        assert "ermission denied: /42" in error["why"] or "(home:alice) is the home of another user" in error["why"]
    assert (projects / "mine" / "file.txt").read_text() == "secret"
    assert sorted(p.name for p in projects.iterdir()) == ["mine"]
    # Bob copying alice's file into his own home is refused too: he cannot read it.
    item = moving("/42/mine/file.txt", "/home/x.txt", "RENAME")
    item["items"][0]["resolvedOldCollection"] = PROJECT
    item["items"][0]["resolvedNewCollection"] = home_of("bob")
    status, error = await post(bob, "/files/copy", item)
    assert status == 403, error
    assert not (Path(pwd.getpwnam("bob").pw_dir) / "x.txt").exists()
    # Alice herself works in the project drive; what she makes is hers.
    status, body = await post(alice, "/files/move", moving("/42/mine/file.txt", "/42/file.txt", "REJECT", PROJECT))
    assert status == 200, body
    assert (projects / "file.txt").stat().st_uid == ALICE_UID
