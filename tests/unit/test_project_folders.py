"""A project's folder, made by the bridge as root: root:<group> 2770, a link or a file in its place refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ucim.common.drives import InvalidLocatorError
from ucim.slurm_bridge.project_folders import ProjectFolderError, ProjectFolders
from ucim.slurm_bridge.settings import BridgeSettings

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="making a folder root:<group> needs root, as the bridge")

GID = 4242


async def test_the_folder_is_made_root_group_owned_2770_below_missing_parents(tmp_path: Path) -> None:
    folders = ProjectFolders(f"{tmp_path}/work/projects/{{name}}")
    path = await folders.ensure("pabc", GID)
    assert path == tmp_path / "work" / "projects" / "pabc"
    found = path.stat()
    assert (found.st_uid, found.st_gid, stat.S_IMODE(found.st_mode)) == (0, GID, 0o2770)


async def test_an_existing_folder_is_left_as_the_site_made_it(tmp_path: Path) -> None:
    (tmp_path / "pabc").mkdir(mode=0o750)
    (tmp_path / "pabc" / "data").write_text("kept")
    path = await ProjectFolders(f"{tmp_path}/{{name}}").ensure("pabc", GID)
    assert stat.S_IMODE(path.stat().st_mode) == 0o750 and (path / "data").read_text() == "kept"


@pytest.mark.parametrize("kind", ["link", "file"])
async def test_a_link_or_a_file_in_its_place_is_refused(tmp_path: Path, kind: str) -> None:
    if kind == "link":
        (tmp_path / "pabc").symlink_to("/etc")
    else:
        (tmp_path / "pabc").write_text("")
    with pytest.raises(ProjectFolderError, match="is not a folder"):
        await ProjectFolders(f"{tmp_path}/{{name}}").ensure("pabc", GID)


@pytest.mark.parametrize("group", ["../etc", "a/b", "", "x\n"])
async def test_a_group_name_never_leaves_the_pattern(tmp_path: Path, group: str) -> None:
    with pytest.raises(InvalidLocatorError):
        await ProjectFolders(f"{tmp_path}/{{name}}").ensure(group, GID)


def test_the_bridge_takes_the_pattern_from_the_instances_drive_roots() -> None:
    roots = {"drive_roots": {"project": "/work/projects/{name}"}}
    assert BridgeSettings(sidecar=roots).project_folder_pattern == "/work/projects/{name}"
    assert BridgeSettings().project_folder_pattern is None
    for pattern in ("~/projects/{name}", "/work/projects", "/work/{name}/../x"):
        with pytest.raises(ValueError, match=r"project|\.\."):
            BridgeSettings(sidecar={"drive_roots": {"project": pattern}})


def test_drive_roots_given_as_one_environment_variable_are_decoded_for_the_instances(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("UCIM_BRIDGE_SIDECAR__DRIVE_ROOTS", '{"project": "/work/projects/{name}"}')
    settings = BridgeSettings()
    assert settings.sidecar["drive_roots"] == {"project": "/work/projects/{name}"}
    assert settings.project_folder_pattern == "/work/projects/{name}"
    monkeypatch.setenv("UCIM_BRIDGE_SIDECAR__DRIVE_ROOTS", '{"project": ')
    with pytest.raises(ValueError, match="not valid JSON"):
        BridgeSettings()
