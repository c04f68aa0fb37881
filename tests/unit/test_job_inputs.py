"""A job's input files, found and checked by the user's instance before the job is submitted."""

from __future__ import annotations

import getpass
import os
import re
from pathlib import Path

import pytest

from ucim.common.app_templates import InvalidJobError
from ucim.common.resources import AppParameter, JobApplication, ParameterValue
from ucim.user_sidecar.job_inputs import local_inputs
from ucim.user_sidecar.paths import DriveResolver

APP = JobApplication(
    name="word-count",
    version="1",
    parameters=[AppParameter(type="input_file", name="input"), AppParameter(type="input_directory", name="output")],
)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "in.txt").write_text("a b\n")
    (tmp_path / "out").mkdir()
    return tmp_path


def resolver(home: Path) -> DriveResolver:
    return DriveResolver({"home": "~", "project": str(home / "projects" / "{name}")}, getpass.getuser(), home)


def file(path: str, drive: str | None = None) -> ParameterValue:
    return ParameterValue(type="file", path=path, drive=drive or f"home:{getpass.getuser()}")


def test_inputs_become_local_paths_in_their_drive(home: Path) -> None:
    given = {"input": file("/7/data/in.txt"), "output": file("/7/out"), "other": file("/7/x")}
    assert local_inputs(APP, given, resolver(home)) == {"input": home / "data" / "in.txt", "output": home / "out"}


@pytest.mark.parametrize(
    ("given", "why"),
    [
        ({"input": file("/7/data/none.txt")}, "'input': /7/data/none.txt does not exist"),
        ({"input": file("/7/data")}, "'input': /7/data is not a file"),
        ({"output": file("/7/data/in.txt")}, "'output': /7/data/in.txt is not a folder"),
        ({"input": file("/7/../etc/passwd")}, "'input': the path contains '..'"),
        ({"input": file("/7/data/in.txt", "home:someone-else")}, "the home of another user"),
        ({"input": file("/7/data/in.txt", "not-a-locator")}, "not a drive of this provider"),
    ],
)
def test_an_input_that_cannot_be_used_refuses_the_job_with_the_reason(
    home: Path, given: dict[str, ParameterValue], why: str
) -> None:
    with pytest.raises(InvalidJobError, match=re.escape(why)):
        local_inputs(APP, given, resolver(home))


def test_a_link_is_not_followed_to_an_input(home: Path) -> None:
    (home / "data" / "link.txt").symlink_to("/etc/hostname")
    with pytest.raises(InvalidJobError, match="symbolic link"):
        local_inputs(APP, {"input": file("/7/data/link.txt")}, resolver(home))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may read anything")
def test_a_file_the_user_cannot_read_is_refused(home: Path) -> None:
    (home / "data" / "in.txt").chmod(0)
    with pytest.raises(InvalidJobError, match="permission denied"):
        local_inputs(APP, {"input": file("/7/data/in.txt")}, resolver(home))
