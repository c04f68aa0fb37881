"""UCloud user → local account: the sanitising rules, the pattern and the refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ucim.slurm_bridge.mapping import (
    LocalAccount,
    Mapper,
    MappingRefusedError,
    MappingSettings,
    account_by_name,
    check_account,
    name_from_pattern,
    sanitise,
)


@pytest.mark.parametrize(
    ("ucloud", "expected"),
    [
        ("alice#1234", ("alice", "1234")),
        ("Alice", ("alice", "")),
        ("Jørgen#7", ("jrgen", "7")),
        ("Émile-Zoé", ("emile-zoe", "")),
        ("anne marie@sdu.dk", ("annemariesdu.dk", "")),
        ("123abc#1", ("abc", "1")),
        ("-.x_y", ("x_y", "")),
        ("a#b#12", ("ab", "12")),
        ("#1234", ("", "1234")),
        ("bob#12a", ("bob12a", "")),
    ],
)
def test_sanitising_a_ucloud_username(ucloud: str, expected: tuple[str, str]) -> None:
    assert sanitise(ucloud) == expected


@pytest.mark.parametrize(
    ("pattern", "ucloud", "name"),
    [
        ("{username}", "alice#1234", "alice"),
        ("u_{username}", "Bob#1", "u_bob"),
        ("{username}{suffix}", "carl#42", "carl42"),
    ],
)
def test_the_pattern_names_the_account(pattern: str, ucloud: str, name: str) -> None:
    assert name_from_pattern(pattern, ucloud) == name


@pytest.mark.parametrize(
    ("ucloud", "why"),
    [
        ("#1234", "no local username can be derived"),
        ("!!!", "no local username can be derived"),
        ("a" * 40, "is not a valid local username"),
    ],
)
def test_usernames_that_give_no_valid_name_are_refused(ucloud: str, why: str) -> None:
    with pytest.raises(MappingRefusedError, match=why):
        name_from_pattern("{username}", ucloud)


@pytest.mark.parametrize("pattern", ["{user}", "{username.upper}", "{username!r}", "{username:>10}", "{0}"])
def test_patterns_may_only_use_the_known_fields(pattern: str) -> None:
    with pytest.raises(ValidationError, match="may only use"):
        MappingSettings(pattern=pattern)


def local(
    uid: int = 1500, gid: int = 1500, groups: tuple[int, ...] = (1500,), login_shell: str = "/bin/bash"
) -> LocalAccount:
    return LocalAccount(name="someone", uid=uid, gid=gid, groups=groups, home="/home/someone", login_shell=login_shell)


def test_a_normal_account_passes() -> None:
    assert check_account(local(), 1000) == local()


@pytest.mark.parametrize(
    ("entry", "min_uid", "why"),
    [
        (local(uid=999), 1000, "uid 999, below the minimum 1000"),
        (local(uid=1500), 2000, "below the minimum 2000"),
        (local(uid=0), 1, "uid 0"),
        (local(gid=0), 1000, "group 0"),
        (local(groups=(1500, 0)), 1000, "group 0"),
        (local(login_shell="/usr/sbin/nologin"), 1000, "may not log in"),
        (local(login_shell="/bin/false"), 1000, "may not log in"),
        (local(login_shell="/sbin/nologin"), 1000, "may not log in"),
    ],
)
def test_accounts_the_policy_refuses(entry: LocalAccount, min_uid: int, why: str) -> None:
    with pytest.raises(MappingRefusedError, match=why):
        check_account(entry, min_uid)


def test_root_and_unknown_users_are_refused() -> None:
    with pytest.raises(MappingRefusedError, match="uid 0"):
        account_by_name("root", 1000)
    with pytest.raises(MappingRefusedError, match="there is no local user 'no-such-user-here'"):
        account_by_name("no-such-user-here", 1000)


async def test_the_pattern_policy_maps_through_the_password_database() -> None:
    with pytest.raises(MappingRefusedError, match="there is no local user 'nobody-at-all'"):
        await Mapper(MappingSettings()).map("nobody-at-all#1")
    with pytest.raises(MappingRefusedError, match="below the minimum"):
        await Mapper(MappingSettings(pattern="root")).map("anyone")


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (b"", "printed no JSON"),
        (b"[1]", "must print"),
        (b'{"uid": true}', "must print"),
        (b'{"localUser": "Bad Name"}', "not a valid local username"),
        (b'{"localUser": "no-such-user-here"}', "there is no local user"),
        (b'{"uid": 0}', "below the minimum"),
    ],
)
def test_script_answers_that_are_refused(answer: bytes, why: str) -> None:
    mapper = Mapper(MappingSettings(policy="script"))
    with pytest.raises(MappingRefusedError, match=why):
        mapper._account_from_answer(answer)


async def test_the_script_policy_needs_an_absolute_root_owned_script() -> None:
    with pytest.raises(MappingRefusedError, match="no script is configured"):
        await Mapper(MappingSettings(policy="script")).map("x")
    with pytest.raises(MappingRefusedError, match="absolute path"):
        await Mapper(MappingSettings(policy="script", script=Path("map.sh"))).map("x")
