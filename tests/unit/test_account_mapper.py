"""Workspace → Slurm account name: the patterns, what they refuse, and the site script (run for real, as root)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from ucim.slurm_bridge.account_mapper import (
    AccountMapperSettings,
    AccountMappingError,
    PatternAccountMapper,
    ProjectWorkspace,
    ScriptAccountMapper,
    UserWorkspace,
    account_mapper,
    fill_pattern,
    name_from_answer,
    variables,
)

ALICE = UserWorkspace("alice", 1101)
PROJECT = ProjectWorkspace("myproj", 5234281, "94056ba8-7ac0-4d4b-9bbd-4a8b5c3d2e1f")
DEFAULTS = AccountMapperSettings()
DEFAULT = PatternAccountMapper(DEFAULTS.users, DEFAULTS.projects)


def test_the_defaults_name_workspace_and_category() -> None:
    assert DEFAULT.name(ALICE, "u1-standard") == "alice_u1-standard"
    assert DEFAULT.name(PROJECT, "u1-standard") == "myproj_u1-standard"
    # Slurm folds account names to lower case itself: lower-casing adds no collision.
    assert DEFAULT.name(ALICE, "GPU") == "alice_gpu"


def test_every_key_of_a_user_workspace() -> None:
    mapper = PatternAccountMapper("u#{uid}_#{ucloudUsername}_#{localUsername}_#{productCategory}", DEFAULTS.projects)
    # ucloudUsername is the local username, as in UCloud/IM (the module says why we keep that).
    assert mapper.name(ALICE, "cpu") == "u1101_alice_alice_cpu"
    assert variables(ALICE, "cpu") == {
        "localUsername": "alice",
        "uid": "1101",
        "ucloudUsername": "alice",
        "productCategory": "cpu",
    }


def test_every_key_of_a_project() -> None:
    mapper = PatternAccountMapper(DEFAULTS.users, "p#{gid}-#{localGroupName}-#{ucloudProjectId}_#{productCategory}")
    assert mapper.name(PROJECT, "cpu") == "p5234281-myproj-94056ba8-7ac0-4d4b-9bbd-4a8b5c3d2e1f_cpu"
    assert set(variables(PROJECT, "cpu")) == {"localGroupName", "gid", "ucloudProjectId", "productCategory"}


@pytest.mark.parametrize(
    ("field", "pattern", "why"),
    [
        ("users", "#{localGroupName}_#{productCategory}", r"unknown key #\{localGroupName\}"),
        ("users", "#{username}", r"unknown key #\{username\}.*#\{localUsername\}"),
        ("projects", "#{uid}_x", r"unknown key #\{uid\}"),
        # Valid keys, but never a valid name: a digit first, or a character Slurm does not take.
        ("users", "#{uid}_#{productCategory}", "'1101_u1-standard', which cannot be a Slurm account"),
        ("projects", "#{ucloudProjectId}", "'94056ba8-7ac0-4d4b-9bbd-4a8b5c3d2e1f', which cannot be"),
        ("projects", "#{localGroupName}.#{productCategory}", "which cannot be a Slurm account"),
        ("users", "", "which cannot be a Slurm account"),
    ],
)
def test_patterns_that_cannot_name_accounts_are_refused_at_load(field: str, pattern: str, why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        AccountMapperSettings.model_validate({field: pattern})
    with pytest.raises(AccountMappingError, match=why):
        PatternAccountMapper(**{**{"users": DEFAULTS.users, "projects": DEFAULTS.projects}, field: pattern})


@pytest.mark.parametrize(
    ("workspace", "category"),
    [
        (ALICE, "u1.standard"),  # never rewritten to u1_standard, which another category may be called
        (ALICE, "gpu a100"),
        (ALICE, "størage"),
        (ALICE, "cpu;id"),
        (ALICE, "cpu\n"),
        (ALICE, "x" * 300),  # slurmdbd would cut it to 255 characters
    ],
)
def test_values_that_cannot_be_in_an_account_name_are_an_error(workspace: UserWorkspace, category: str) -> None:
    with pytest.raises(AccountMappingError, match="which cannot be a Slurm account") as caught:
        DEFAULT.name(workspace, category)
    # The message says where the name came from.
    assert "#{localUsername}_#{productCategory}" in str(caught.value)


def test_slurms_own_root_account_is_never_a_workspace_account() -> None:
    mapper = PatternAccountMapper("#{localUsername}", DEFAULTS.projects)
    with pytest.raises(AccountMappingError, match="Slurm's own account"):
        mapper.name(UserWorkspace("root", 0), "cpu")


def test_values_are_put_in_literally_once() -> None:
    # A value that looks like a placeholder is not expanded again.
    assert fill_pattern("#{a}-#{b}", {"a": "#{b}", "b": "x"}) == "#{b}-x"
    with pytest.raises(AccountMappingError, match=r"unknown key #\{c\}"):
        fill_pattern("#{c}", {"a": "1"})


async def test_the_pattern_mapper_answers_through_the_common_interface() -> None:
    mapper = account_mapper(AccountMapperSettings(users="ucloud-#{localUsername}-#{productCategory}"))
    assert await mapper.account(ALICE, "cpu") == "ucloud-alice-cpu"


def test_the_script_mapper_needs_a_script() -> None:
    with pytest.raises(ValidationError, match="no script is configured"):
        AccountMapperSettings(type="script")
    settings = AccountMapperSettings(type="script", script=Path("/usr/local/sbin/map-account"))
    assert isinstance(account_mapper(settings), ScriptAccountMapper)


@pytest.mark.parametrize(
    ("stdout", "why"),
    [
        (b"", "printed no JSON"),
        (b"alice_cpu", "printed no JSON"),
        (b'["alice_cpu"]', "must print"),
        (b'{"account": "alice_cpu"}', "must print"),  # the docs' key, not the code's (PROTOCOL-ACCOUNTING §5)
        (b'{"accountName": 7}', "must print"),
    ],
)
def test_script_answers_that_are_not_names(stdout: bytes, why: str) -> None:
    with pytest.raises(AccountMappingError, match=why):
        name_from_answer(stdout)


# --------------------------------------------------------------------------- the script, run for real

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="a site script must be owned by root")


def site_script(tmp_path: Path, body: str) -> Path:
    """A Python site script; it records the path and mode of its request file next to itself."""
    script = tmp_path / "map-account"
    script.write_text(
        "#!/usr/bin/env python3\n"
        "import json, os, stat, sys\n"
        "request = sys.argv[1]\n"
        f"with open({str(tmp_path / 'seen')!r}, 'w') as seen:\n"
        "    json.dump({'path': request, 'mode': stat.S_IMODE(os.stat(request).st_mode)}, seen)\n"
        "v = json.load(open(request))\n" + body
    )
    script.chmod(0o755)
    return script


@needs_root
async def test_the_script_gets_the_variables_in_a_private_file_and_names_the_account(tmp_path: Path) -> None:
    body = "name = 'P_' + v['localGroupName'] + '_' + v['gid'] + '_' + v['productCategory']\n"
    body += "print(json.dumps({'accountName': name.upper()}))\n"
    mapper = ScriptAccountMapper(site_script(tmp_path, body))
    # Upper case in the answer is lower-cased, as a pattern's result is.
    assert await mapper.account(PROJECT, "cpu") == "p_myproj_5234281_cpu"
    seen = json.loads((tmp_path / "seen").read_text())
    assert seen["mode"] == 0o600
    assert not Path(seen["path"]).exists(), "the request file is removed afterwards"


@needs_root
@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("print(json.dumps({'accountName': 'alice cpu; rm -rf /'}))\n", "which cannot be a Slurm account"),
        ("print(json.dumps({'accountName': 'a' * 256}))\n", "Slurm keeps 255"),
        ("sys.stderr.write('no such project\\n'); sys.exit(3)\n", r"exit status 3\): no such project"),
        ("import time; time.sleep(30)\n", "did not answer within 0.5 s"),
    ],
)
async def test_script_failures_are_readable(tmp_path: Path, body: str, why: str) -> None:
    mapper = ScriptAccountMapper(site_script(tmp_path, body), timeout_seconds=0.5)
    with pytest.raises(AccountMappingError, match=why):
        await mapper.account(ALICE, "cpu")


async def test_a_script_others_could_change_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AccountMappingError, match="must be an absolute path"):
        await ScriptAccountMapper(Path("map-account")).account(ALICE, "cpu")
    script = site_script(tmp_path, "print('{}')\n")
    script.chmod(0o777)
    with pytest.raises(AccountMappingError, match="owned by root and writable only by root"):
        await ScriptAccountMapper(script).account(ALICE, "cpu")
