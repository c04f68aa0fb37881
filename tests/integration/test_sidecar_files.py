"""Files through real user instances, forked as alice and bob: browse, retrieve, denial, links."""

from __future__ import annotations

import pwd
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.integration.instance_support import SIDECAR, Spawner, fork_server, session_for
from tests.support.platform import Platform

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


def alice_home() -> Path:
    return Path(pwd.getpwnam("alice").pw_dir)  # the platform creates alice; so not at import time


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def spawner(platform: Platform) -> AsyncIterator[Spawner]:
    # Every instance also gets a drive rooted in alice's home: only alice's own may open it.
    drives = {"home": "~", "alice-home": str(alice_home())}
    async with fork_server(platform, SIDECAR, drives=drives) as started:
        yield started


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def alice(spawner: Spawner) -> str:
    return (await spawner.spawn("alice"))[1]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def bob(spawner: Spawner) -> str:
    return (await spawner.spawn("bob"))[1]


def as_alice(*command: str) -> None:
    subprocess.run(["runuser", "-u", "alice", "--", *command], check=True, timeout=30, cwd="/")


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


def browse(path: str, **request: Any) -> dict[str, Any]:
    flags = request.pop("flags", {})
    return {"resolvedCollection": {}, "Browse": {"flags": {"path": path, **flags}, **request}}


def retrieve(file_id: str) -> dict[str, Any]:
    return {"resolvedCollection": {}, "retrieve": {"id": file_id, "flags": {}}}


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
    status, found = await post(alice, "/files/retrieve", retrieve(f"/alice-home/{folder}/data.txt"))
    assert (status, found["id"], found["status"]["sizeInBytes"]) == (200, f"/alice-home/{folder}/data.txt", 5)


async def test_bob_is_denied_alice_home(bob: str, folder: str) -> None:
    status, error = await post(bob, "/files/browse", browse(f"/alice-home/{folder}"))
    assert (status, error["why"]) == (403, f"Permission denied: /alice-home/{folder}")
    status, error = await post(bob, "/files/retrieve", retrieve(f"/alice-home/{folder}/data.txt"))
    assert (status, error["statusCode"]) == (403, 403)
    # His own home is his.
    status, page = await post(bob, "/files/browse", browse("/home"))
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
        ("/etc/passwd", "Unknown drive 'etc'"),
    ]:
        status, error = await post(alice, "/files/browse", browse(path))
        assert status == 400
        assert error["why"].startswith(why)
