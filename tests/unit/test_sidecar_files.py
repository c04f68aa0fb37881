"""POST /files/browse and /files/retrieve through the real app factory, on a temporary home.

The drive of every request is ``home`` with the locator ``home:<this process's user>``.
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from ucim.common.protocol import PageV2, ProviderFile
from ucim.user_sidecar.app import init_app
from ucim.user_sidecar.settings import SidecarSettings

Client = Any
USER = getpass.getuser()
HOME_DRIVE = {"id": "home", "providerGeneratedId": f"home:{USER}", "specification": {"title": "Home"}}


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, tmp_path: Path) -> Client:
    return await aiohttp_client(init_app(SidecarSettings(user=USER, home=tmp_path)))


def browse_body(path: str, key: str = "Browse", **request: Any) -> dict[str, Any]:
    flags = request.pop("flags", {})
    return {"resolvedCollection": HOME_DRIVE, key: {"flags": {"path": path, **flags}, **request}}


def retrieve_body(file_id: str, drive: dict[str, Any] = HOME_DRIVE) -> dict[str, Any]:
    return {"resolvedCollection": drive, "retrieve": {"id": file_id, "flags": {}}}


async def browse(client: Client, path: str, **request: Any) -> PageV2[ProviderFile]:
    response = await client.post("/files/browse", json=browse_body(path, **request))
    assert response.status == 200, await response.text()
    return PageV2[ProviderFile].model_validate(await response.json())


async def every_page(client: Client, path: str, **request: Any) -> list[str]:
    ids: list[str] = []
    token = None
    while True:
        page = await browse(client, path, next=token, **request)
        ids += [item.id for item in page.items]
        token = page.next
        if token is None:
            return ids


async def error(client: Client, route: str, body: dict[str, Any]) -> tuple[int, str]:
    response = await client.post(route, json=body)
    payload = await response.json()
    assert payload["statusCode"] == response.status
    return response.status, payload["why"]


async def test_browse_lists_a_folder_as_provider_files(client: Client, tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_bytes(b"12345")
    (tmp_path / "a").mkdir()
    os.utime(tmp_path / "b.txt", ns=(1_700_000_000_123_000_000, 1_700_000_001_456_000_000))
    response = await client.post("/files/browse", json=browse_body("/home"))
    assert response.status == 200
    body = await response.json()
    assert body["itemsPerPage"] == 50
    assert body["next"] is None
    assert [item["id"] for item in body["items"]] == ["/home/a", "/home/b.txt"]
    folder, file = body["items"]
    assert folder["status"]["type"] == "DIRECTORY"
    assert folder["status"]["sizeInBytes"] is None
    assert "icon" not in folder["status"]
    assert file["status"] | {"metadata": None} == {
        "type": "FILE",
        "sizeInBytes": 5,
        "sizeIncludingChildrenInBytes": None,
        "fileCount": None,
        "directoryCount": None,
        "modifiedAt": 1_700_000_001_456,
        "accessedAt": 1_700_000_000_123,
        "unixMode": (tmp_path / "b.txt").stat().st_mode & 0o7777,
        "unixOwner": os.getuid(),
        "unixGroup": (tmp_path / "b.txt").stat().st_gid,
        "metadata": None,
    }
    assert file["createdAt"] == 1_700_000_001_456


async def test_the_lowercase_browse_key_works_too(client: Client, tmp_path: Path) -> None:
    (tmp_path / "x").write_text("")
    response = await client.post("/files/browse", json=browse_body("/home/", key="browse"))
    assert [item["id"] for item in (await response.json())["items"]] == ["/home/x"]


async def test_paging_visits_every_entry_once_in_order(client: Client, tmp_path: Path) -> None:
    names = [f"f{i:04d}" for i in range(237)]
    for name in names:
        (tmp_path / name).write_text("")
    assert await every_page(client, "/home", itemsPerPage=50) == [f"/home/{n}" for n in names]
    assert await every_page(client, "/home", itemsPerPage=50, sortDirection="descending") == [
        f"/home/{n}" for n in reversed(names)
    ]
    first = await browse(client, "/home", itemsPerPage=100)
    assert len(first.items) == 100
    assert first.next


async def test_paging_survives_changes_between_pages(client: Client, tmp_path: Path) -> None:
    for i in range(10):
        (tmp_path / f"f{i}").write_text("")
    first = await browse(client, "/home", itemsPerPage=5)
    assert [item.id for item in first.items] == [f"/home/f{i}" for i in range(5)]
    (tmp_path / "f0").unlink()
    (tmp_path / "f1").unlink()
    (tmp_path / "a").write_text("")  # sorts before the cursor: not shown again
    second = await browse(client, "/home", itemsPerPage=5, next=first.next)
    assert [item.id for item in second.items] == [f"/home/f{i}" for i in range(5, 10)]
    assert second.next is None


async def test_sorting_by_size_and_modification_time(client: Client, tmp_path: Path) -> None:
    for name, size, mtime in [("small", 1, 300), ("big", 100, 100), ("middle", 10, 200)]:
        (tmp_path / name).write_bytes(b"x" * size)
        os.utime(tmp_path / name, (mtime, mtime))
    (tmp_path / "dir").mkdir()
    os.utime(tmp_path / "dir", (400, 400))
    by_size = await every_page(client, "/home", sortBy="SIZE", itemsPerPage=2)
    assert by_size == ["/home/dir", "/home/small", "/home/middle", "/home/big"]
    by_size_desc = await every_page(client, "/home", sortBy="size", sortDirection="descending", itemsPerPage=3)
    assert by_size_desc == list(reversed(by_size))
    by_time = await every_page(client, "/home", flags={"sortBy": "MODIFIED_AT"}, itemsPerPage=1)
    assert by_time == ["/home/big", "/home/middle", "/home/small", "/home/dir"]


async def test_hidden_files_extensions_and_undecodable_names(client: Client, tmp_path: Path) -> None:
    for name in [".hidden", "a.txt", "b.csv"]:
        (tmp_path / name).write_text("")
    (tmp_path / "sub").mkdir()
    os.close(os.open(bytes(tmp_path) + b"/bad-\xff", os.O_CREAT | os.O_WRONLY, 0o600))
    assert await every_page(client, "/home") == ["/home/.hidden", "/home/a.txt", "/home/b.csv", "/home/sub"]
    hidden = await every_page(client, "/home", flags={"filterHiddenFiles": True})
    assert hidden == ["/home/a.txt", "/home/b.csv", "/home/sub"]
    assert await every_page(client, "/home", flags={"filterByFileExtension": ".txt"}) == ["/home/a.txt", "/home/sub"]


async def test_items_per_page_defaults_and_caps(client: Client, tmp_path: Path) -> None:
    for i in range(1001):
        (tmp_path / f"{i:04d}").write_text("")
    assert (await browse(client, "/home", itemsPerPage=0)).items_per_page == 50
    page = await browse(client, "/home", itemsPerPage=5000)
    assert page.items_per_page == 1000
    assert len(page.items) == 1000
    assert page.next


async def test_retrieve_describes_one_file_with_folder_icons(client: Client, tmp_path: Path) -> None:
    (tmp_path / "Trash").mkdir()
    (tmp_path / "ucloud-jobs").mkdir()
    (tmp_path / "ucloud-jobs" / "Trash").mkdir()
    (tmp_path / "f").write_text("abc")

    async def retrieve(file_id: str) -> dict[str, Any]:
        response = await client.post("/files/retrieve", json=retrieve_body(file_id))
        assert response.status == 200, await response.text()
        result: dict[str, Any] = await response.json()
        return result

    assert (await retrieve("/home/Trash"))["status"]["icon"] == "DIRECTORY_TRASH"
    assert (await retrieve("/home/ucloud-jobs"))["status"]["icon"] == "DIRECTORY_JOBS"
    assert "icon" not in (await retrieve("/home/ucloud-jobs/Trash"))["status"]
    found = await retrieve("/home/f")
    assert found["id"] == "/home/f"
    assert found["status"]["sizeInBytes"] == 3
    root = await retrieve("/home")
    assert root["status"]["type"] == "DIRECTORY"
    icons = {item.id: item.status.icon for item in (await browse(client, "/home")).items}
    assert icons == {"/home/Trash": "DIRECTORY_TRASH", "/home/ucloud-jobs": "DIRECTORY_JOBS", "/home/f": ""}


@pytest.mark.parametrize(
    "case",
    [
        ("/files/browse", browse_body("/home/.."), 400, "The path contains '..'"),
        ("/files/browse", browse_body("/home/a\x00"), 400, "The path contains a NUL byte"),
        ("/files/browse", browse_body("/home/\udcff"), 400, "The path is not valid UTF-8"),
        ("/files/browse", browse_body("/etc"), 400, "/etc is not in drive home"),
        ("/files/browse", browse_body("/home/nope"), 404, "/home/nope does not exist"),
        ("/files/browse", browse_body("/home/link"), 400, "/home/link is a symbolic link; links are not followed"),
        ("/files/browse", browse_body("/home", sortBy="colour"), 400, "Cannot sort by 'colour'"),
        ("/files/browse", browse_body("/home", next="garbage!"), 400, "The next token is not one this instance made"),
        ("/files/browse", {"Browse": {"flags": {}}}, 400, "Browse.flags.path is required"),
        ("/files/browse", {"resolvedCollection": {}}, 400, "Invalid request: Browse: Field required"),
        ("/files/retrieve", retrieve_body("relative"), 400, "A file id is /<drive>/<path>"),
        ("/files/retrieve", retrieve_body("/home/link/passwd"), 400, "/home/link is a symbolic link"),
        ("/files/retrieve", {"retrieve": {"id": "/home", "flags": {}}}, 400, "/home is not in a drive"),
        (
            "/files/retrieve",
            retrieve_body("/17/a", {"id": "17"}),
            400,
            "Drive 17: the drive has no providerGeneratedId",
        ),
        (
            "/files/retrieve",
            retrieve_body("/17/a", {"id": "17", "providerGeneratedId": "s3:bucket"}),
            400,
            "Drive 17: 's3:bucket' is not a drive of this provider",
        ),
        (
            "/files/retrieve",
            retrieve_body("/17/a", {"id": "17", "providerGeneratedId": "home:someone-else"}),
            403,
            "Drive 17 (home:someone-else) is the home of another user",
        ),
        (
            "/files/retrieve",
            retrieve_body("/17/a", {"id": "17", "providerGeneratedId": "project:physics"}),
            400,
            "Drive 17 (project:physics): project drives are not configured",
        ),
        (
            "/files/retrieve",
            retrieve_body("/home/a", {"id": "../x", "providerGeneratedId": f"home:{USER}"}),
            400,
            "'../x' is not a drive id",
        ),
    ],
)
async def test_refusals_are_readable(
    client: Client, tmp_path: Path, case: tuple[str, dict[str, Any], int, str]
) -> None:
    route, body, status, why = case
    (tmp_path / "link").symlink_to("/etc")
    got_status, got_why = await error(client, route, body)
    assert (got_status, got_why[: len(why)]) == (status, why)


async def test_a_next_token_from_another_sort_is_refused(client: Client, tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / str(i)).write_text("")
    token = (await browse(client, "/home", itemsPerPage=1)).next
    status, why = await error(client, "/files/browse", browse_body("/home", next=token, sortBy="SIZE"))
    assert (status, why) == (400, "The next token belongs to a different sort order; start again without it")


async def test_project_drives_are_rooted_by_the_site_pattern(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    (tmp_path / "projects" / "physics").mkdir(parents=True)
    (tmp_path / "projects" / "physics" / "data.csv").write_text("1,2")
    roots = {"project": str(tmp_path / "projects" / "{name}")}
    client = await aiohttp_client(init_app(SidecarSettings(user=USER, home=tmp_path / "home", drive_roots=roots)))
    drive = {"id": "42", "providerGeneratedId": "project:physics"}
    response = await client.post("/files/retrieve", json=retrieve_body("/42/data.csv", drive))
    assert response.status == 200, await response.text()
    assert (await response.json())["status"]["sizeInBytes"] == 3
    status, why = await error(
        client, "/files/retrieve", retrieve_body("/42/x", {**drive, "providerGeneratedId": "project:chem"})
    )
    assert (status, why) == (404, "Drive '42' does not exist")
