"""The workspace accounts' sacctmgr and sshare calls: names, argument lists, output, outcomes, metrics.

Every sacctmgr and sshare text below was captured from the real Slurm 22.05.8 of the local platform
(``hack/local_platform.py up``) with the arguments this code uses, stdout and stderr apart. The
SlurmAccounts tests run on a stand-in SlurmClient that replays such output: no processes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from ucim.common.slurm import CommandResult, SlurmClient, SlurmConfig
from ucim.common.slurm_errors import SlurmError, SlurmUnavailableError
from ucim.slurm_bridge import sacctmgr
from ucim.slurm_bridge.sacctmgr import (
    AccountState,
    SacctmgrRefusedError,
    SlurmNameError,
    check_account_name,
    check_user_name,
    parse_associations,
    parse_tres,
    parse_usage,
    parse_user_accounts,
)
from ucim.slurm_bridge.slurm_accounts import SlurmAccounts

# `sacctmgr -nP show assoc format=account,user,maxjobs,grptresmins,fairshare`, after
# `modify account where name=ucimexp_a set maxjobs=0 grptresmins=billing=100 fairshare=5` (alice a member)
# and, for ucimexp_b, `set grptresmins=cpu=10` then `set grptresmins=billing=-1 maxjobs=-1 fairshare=-1`.
SHOW_ASSOC = """\
root||||1
root|root|||1
ucimproj||||1
ucimproj|alice|||1
ucimproj|bob|||1
ucimexp_a||0|billing=100|5
ucimexp_a|alice|0||1
ucimexp_b|||cpu=10|1
ucimexp_b|alice|||1
ucimexp_c||0|billing=100|1
ucimexp_c|alice|0||1
ucimexp_c|bob|0||1
"""

# `sshare -Pho account,user,grptresraw` (as root: account rows, and root's own user row).
SSHARE = """\
root||cpu=5,mem=2386,energy=0,node=3,billing=5,fs/disk=0,vmem=0,pages=0
 root|root|cpu=0,mem=0,energy=0,node=0,billing=0,fs/disk=0,vmem=0,pages=0
 ucimexp_a||cpu=0,mem=0,energy=0,node=0,billing=0,fs/disk=0,vmem=0,pages=0
 ucimexp_b||cpu=0,mem=0,energy=0,node=0,billing=0,fs/disk=0,vmem=0,pages=0
 ucimproj||cpu=2,mem=2005,energy=0,node=2,billing=2,fs/disk=0,vmem=0,pages=0
"""

# `sacctmgr -nP show user where name=bob withassoc format=user,defaultaccount,account`
USER_ACCOUNTS = """\
bob|ucimexp_f|ucimexp_f
bob|ucimexp_f|ucimproj
"""

CREATED = """\
 Adding Account(s)
  ucimexp_f
 Settings
  Description     = x
  Organization    = x
 Associations
  A = ucimexp_f  C = ucim      
 Settings
  Fairshare     = 1
  MaxJobs       = NONE
  MaxSubmitJobs = NONE
  Parent        = root
"""  # noqa: W291 - sacctmgr pads its columns
NOTHING_ADDED = " Nothing new added.\n"
NOTHING_DELETED = " Nothing deleted\n"
NOTHING_MODIFIED = " Nothing modified\n"
NO_SUCH_ACCOUNT = " This account 'ucimexp_nonexist' doesn't exist.\n        Contact your admin to add this account.\n"
# `delete account where name=ucimexp_j` with a pending job (exit status 1, on stderr).
JOBS_ACTIVE = (
    " Error with request: Job(s) active, cancel job(s) before remove\n"
    "  JobID = 10899      C = ucim       A = ucimexp_j  U = alice    \n"
)
SLURMDBD_DOWN = (
    "sacctmgr: error: slurm_persist_conn_open_without_init: failed to open persistent connection to"
    " host:localhost:1: Connection refused\n"
    "sacctmgr: error: Sending PersistInit msg: Connection refused\n"
)
# `show user ... withassoc` of alice (as captured for another account) and of a Slurm-only user in the same shape.
ALICE_AND_GHOST = """\
alice|ucimproj|ucimexp_h
alice|ucimproj|ucimproj
ucimexpgh1|ucimexp_h|ucimexp_h
"""
# `remove user where name=alice,ucimexpgh1 account=ucimexp_h` (exit status 1, on stderr).
DEFAULT_REFUSED = """\
 Error with request: You can not remove the default account of a user
  C = ucim            A = ucimexp_h  U = ucimexpgh1
 You must change the default account of these users or remove the users completely from the affected clusters \
to allow these changes.
 Changes Discarded
"""


SLURMCTLD_DOWN = "Couldn't get shares from controller: Unable to contact slurm controller (connect failure)\n"

HOSTILE = [
    "",
    "Alice",
    "1abc",
    "a b",
    "a;rm -rf /",
    "$(id)",
    "`id`",
    "a|b",
    "a=b",
    "a,b",
    "a\n",
    "a\nb",
    "-i",
    "x" * 300,
]


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["alice_u1-standard", "p5234281-cpu", "a", "a" * 255])
def test_valid_account_names(name: str) -> None:
    assert check_account_name(name) == name


@pytest.mark.parametrize("name", [*HOSTILE, "root", "a.b", "a" * 256, None, 7])
def test_account_names_sacctmgr_would_misread_are_refused(name: Any) -> None:
    with pytest.raises(SlurmNameError):
        check_account_name(name)


@pytest.mark.parametrize("name", ["alice", "_svc", "anne.marie", "x-1", "a" * 32])
def test_valid_user_names(name: str) -> None:
    assert check_user_name(name) == name


@pytest.mark.parametrize("name", [*HOSTILE, "a" * 33])
def test_user_names_sacctmgr_would_misread_are_refused(name: str) -> None:
    with pytest.raises(SlurmNameError):
        check_user_name(name)


def test_the_messages_say_what_is_wrong() -> None:
    with pytest.raises(SlurmNameError, match="300 characters long; Slurm keeps 255"):
        check_account_name("a" * 300)
    with pytest.raises(SlurmNameError, match="Slurm's own account"):
        check_account_name("root")
    with pytest.raises(SlurmNameError, match=r"'a\\n' is not a valid Slurm account name"):
        check_account_name("a\n")


# --------------------------------------------------------------------------- argument lists


def test_argument_lists_name_every_name_explicitly() -> None:
    assert sacctmgr.show_associations_args(None) == [
        "-nP", "show", "assoc", "wopinfo", "format=account,user,maxjobs,grptresmins,fairshare",
    ]  # fmt: skip
    assert sacctmgr.show_associations_args("ucim") == [
        "-nP", "show", "assoc", "where", "cluster=ucim", "wopinfo", "format=account,user,maxjobs,grptresmins,fairshare",
    ]  # fmt: skip
    assert sacctmgr.show_associations_args(None, "set") == [
        "-nP", "show", "assoc", "where", "account=set", "wopinfo", "format=account,user,maxjobs,grptresmins,fairshare",
    ]  # fmt: skip
    assert sacctmgr.create_account_args(
        "set", description="My project", organization="ucloud", fairshare=1, parent=None, cluster=None
    ) == [
        "-i", "create", "account", "name=set", "description=My project", "organization=ucloud",
        "maxjobs=-1", "maxsubmitjobs=-1", "fairshare=1",
    ]  # fmt: skip
    assert sacctmgr.create_account_args(
        "a", description="", organization="", fairshare=0, parent="ucloud", cluster="ucim"
    ) == ["-i", "create", "account", "name=a", "parent=ucloud", "cluster=ucim", "maxjobs=-1", "maxsubmitjobs=-1",
          "fairshare=0"]  # fmt: skip
    assert sacctmgr.add_users_args("a", ["alice", "bob"], None) == ["-i", "add", "user", "name=alice,bob", "account=a"]
    assert sacctmgr.remove_users_args("a", ["bob"], "ucim") == [
        "-i", "remove", "user", "where", "name=bob", "account=a", "cluster=ucim",
    ]  # fmt: skip
    assert sacctmgr.user_accounts_args(["bob"], None) == [
        "-nP", "show", "user", "where", "name=bob", "withassoc", "format=user,defaultaccount,account",
    ]  # fmt: skip
    assert sacctmgr.set_default_account_args("bob", "ucimproj", None) == [
        "-i", "modify", "user", "where", "name=bob", "set", "defaultaccount=ucimproj",
    ]  # fmt: skip
    assert sacctmgr.delete_account_args("a", None) == ["-i", "delete", "account", "where", "name=a"]
    assert sacctmgr.usage_args() == ["-Pho", "account,user,grptresraw"]


@pytest.mark.parametrize(
    ("locked", "quota", "fairshare", "settings"),
    [
        (True, 6000, 4, ["maxjobs=0", "grptresmins=billing=6000", "fairshare=4"]),
        (False, None, None, ["maxjobs=-1", "grptresmins=billing=-1"]),
        (False, 0, 0, ["maxjobs=-1", "grptresmins=billing=0", "fairshare=0"]),
    ],
)
def test_limits(locked: bool, quota: int | None, fairshare: int | None, settings: list[str]) -> None:
    args = sacctmgr.limits_args("a", locked=locked, quota_minutes=quota, fairshare=fairshare, cluster=None)
    assert args == ["-i", "modify", "account", "where", "name=a", "set", *settings]


@pytest.mark.parametrize(("quota", "fairshare"), [(-5, None), (None, -1), (True, None)])
def test_limits_refuse_negative_numbers(quota: Any, fairshare: Any) -> None:
    with pytest.raises(ValueError, match=">= 0"):
        sacctmgr.limits_args("a", locked=False, quota_minutes=quota, fairshare=fairshare, cluster=None)


@pytest.mark.parametrize("text", ["it's", 'a "b"', "a|b", "a,b", "a=b", "a\nb", "x" * 256])
def test_free_text_that_sacctmgr_would_misread_is_refused(text: str) -> None:
    with pytest.raises(SlurmNameError, match="may hold only"):
        sacctmgr.check_free_text(text, "description")


# --------------------------------------------------------------------------- output


def test_parse_associations() -> None:
    accounts = parse_associations(SHOW_ASSOC)
    assert sorted(accounts) == ["root", "ucimexp_a", "ucimexp_b", "ucimexp_c", "ucimproj"]
    assert accounts["ucimexp_a"] == AccountState(
        name="ucimexp_a", users=frozenset({"alice"}), max_jobs=0, grp_tres_mins={"billing": 100}, fairshare=5
    )
    assert accounts["ucimexp_a"].locked and accounts["ucimexp_a"].quota_minutes == 100
    # Unlocked (maxjobs=-1 shows as nothing), no billing limit, another TRES's limit kept.
    b = accounts["ucimexp_b"]
    assert (b.locked, b.max_jobs, b.quota_minutes, b.grp_tres_mins, b.fairshare) == (False, None, None, {"cpu": 10}, 1)
    assert accounts["ucimexp_c"].users == {"alice", "bob"}
    assert accounts["root"].users == {"root"}


def test_parse_associations_skips_lines_it_cannot_read() -> None:
    accounts = parse_associations("acct|||\nacct||||parent\n\nother|x|y|z|w|v\n")
    assert accounts == {"acct": AccountState(name="acct", fairshare=None)}


def test_parse_tres() -> None:
    assert parse_tres("cpu=10,billing=100,gres/gpu=2") == {"cpu": 10, "billing": 100, "gres/gpu": 2}
    assert parse_tres("") == {}
    assert parse_tres("billing=,=3,cpu=x") == {}


def test_parse_usage_reads_account_rows_only() -> None:
    assert parse_usage(SSHARE) == {"root": 5, "ucimexp_a": 0, "ucimexp_b": 0, "ucimproj": 2}
    # A user row (indented deeper) is not an account's usage.
    assert parse_usage("  ucimproj|alice|cpu=0,billing=7\n ucimproj||cpu=0,billing=9\n") == {"ucimproj": 9}
    assert parse_usage("acct||cpu=4\n") == {}


def test_parse_user_accounts() -> None:
    assert parse_user_accounts(USER_ACCOUNTS) == {"bob": ("ucimexp_f", {"ucimexp_f", "ucimproj"})}
    # After sacctmgr removed bob from his default account: no default at all.
    assert parse_user_accounts("bob||ucimproj\n") == {"bob": ("", {"ucimproj"})}


@pytest.mark.parametrize(
    ("returncode", "stdout", "stderr", "expected"),
    [
        (0, CREATED, "", "done"),
        (1, NOTHING_ADDED, "", "nothing_added"),
        (1, NOTHING_DELETED, "", "nothing_deleted"),
        (1, NOTHING_MODIFIED, "", "nothing_modified"),
        # `add user name=alice account=ucimexp_nonexist`: "Nothing new added." on stdout, the reason on stderr.
        (1, NOTHING_ADDED, NO_SUCH_ACCOUNT, None),
        (1, "", JOBS_ACTIVE, None),
        (1, "", SLURMDBD_DOWN, None),
        (1, "", DEFAULT_REFUSED, None),
    ],
)
def test_outcome(returncode: int, stdout: str, stderr: str, expected: str | None) -> None:
    assert sacctmgr.outcome(returncode, stdout, stderr) == expected


def test_failures_carry_sacctmgrs_words_and_tell_retryable_from_refused() -> None:
    down = sacctmgr.failure("sacctmgr show assoc", 1, "", SLURMDBD_DOWN, ["sacctmgr"])
    assert isinstance(down, SlurmUnavailableError)
    assert "Connection refused" in down.detail and "sacctmgr: error" not in down.detail
    refused = sacctmgr.failure("deleting Slurm account ucimexp_j", 1, "", JOBS_ACTIVE, ["sacctmgr"])
    assert type(refused) is SacctmgrRefusedError
    assert str(refused).startswith("deleting Slurm account ucimexp_j failed (Slurm: Error with request: Job(s) active")
    sshare = sacctmgr.sshare_failure(255, SLURMCTLD_DOWN, ["sshare"])
    assert isinstance(sshare, SlurmUnavailableError)


# --------------------------------------------------------------------------- SlurmAccounts on a stand-in client


class Replay(SlurmClient):
    """A SlurmClient whose ``run`` replays answers by (tool, verb) and records every call."""

    def __init__(self, answers: Mapping[tuple[str, str], tuple[int, str, str]] | None = None) -> None:
        super().__init__(SlurmConfig(bin_dir=Path("/nonexistent")))
        self.answers = dict(answers or {})
        self.calls: list[list[str]] = []

    async def run(
        self,
        tool: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        query: bool = True,
    ) -> CommandResult:
        self.calls.append([tool, *args])
        verb = args[1] if tool == "sacctmgr" else ""
        returncode, stdout, stderr = self.answers.get((tool, verb), (0, "", ""))
        return CommandResult(tuple(self.calls[-1]), returncode, stdout, stderr, 0.001)


def calls_total(verb: str, result: str) -> float:
    return REGISTRY.get_sample_value("ucim_sacctmgr_calls_total", {"verb": verb, "result": result}) or 0.0


async def test_snapshot_and_usage_are_one_call_each() -> None:
    client = Replay({("sacctmgr", "show"): (0, SHOW_ASSOC, ""), ("sshare", ""): (0, SSHARE, "")})
    accounts = SlurmAccounts(client=client, cluster="ucim")
    before = calls_total("show", "ok")
    assert (await accounts.snapshot())["ucimexp_c"].users == {"alice", "bob"}
    assert (await accounts.usage_minutes())["ucimproj"] == 2
    assert client.calls == [
        ["sacctmgr", *sacctmgr.show_associations_args("ucim")],
        ["sshare", "-Pho", "account,user,grptresraw"],
    ]
    assert calls_total("show", "ok") == before + 1


async def test_one_account_is_read_alone_and_none_when_there_is_none() -> None:
    client = Replay({("sacctmgr", "show"): (0, SHOW_ASSOC, "")})
    accounts = SlurmAccounts(client=client, cluster="ucim")
    state = await accounts.account("ucimexp_c")
    assert state is not None and state.users == {"alice", "bob"}
    assert client.calls == [["sacctmgr", *sacctmgr.show_associations_args("ucim", "ucimexp_c")]]
    client.answers[("sacctmgr", "show")] = (0, "", "")  # what sacctmgr says of an account it does not have
    assert await accounts.account("ucimexp_none") is None
    with pytest.raises(SlurmNameError):
        await accounts.account("a,b")


async def test_ensure_account_says_whether_it_created_it() -> None:
    client = Replay({("sacctmgr", "create"): (0, CREATED, "")})
    accounts = SlurmAccounts(client=client)
    assert await accounts.ensure_account("ucimexp_f", description="x", organization="x") is True
    client.answers[("sacctmgr", "create")] = (1, NOTHING_ADDED, "")
    assert await accounts.ensure_account("ucimexp_f", description="x", organization="x") is False
    assert client.calls[-1] == [
        "sacctmgr", "-i", "create", "account", "name=ucimexp_f", "description=x", "organization=x",
        "maxjobs=-1", "maxsubmitjobs=-1", "fairshare=1",
    ]  # fmt: skip


async def test_add_users_is_idempotent_but_a_missing_account_is_refused() -> None:
    client = Replay({("sacctmgr", "add"): (1, NOTHING_ADDED, "")})
    accounts = SlurmAccounts(client=client)
    await accounts.add_users("ucimexp_f", ["bob", "alice", "bob"])
    assert client.calls == [["sacctmgr", "-i", "add", "user", "name=alice,bob", "account=ucimexp_f"]]
    await accounts.add_users("ucimexp_f", [])
    assert len(client.calls) == 1, "no members, no call"
    client.answers[("sacctmgr", "add")] = (1, NOTHING_ADDED, NO_SUCH_ACCOUNT)
    before = calls_total("add", "refused")
    with pytest.raises(SacctmgrRefusedError, match="This account 'ucimexp_nonexist' doesn't exist"):
        await accounts.add_users("ucimexp_nonexist", ["alice"])
    assert calls_total("add", "refused") == before + 1


async def test_remove_users_moves_a_default_account_first_and_removes_last_accounts_apart() -> None:
    listed = USER_ACCOUNTS.replace("ucimexp_f", "ucimexp_h") + ALICE_AND_GHOST
    client = Replay({("sacctmgr", "show"): (0, listed, "")})
    await SlurmAccounts(client=client).remove_users("ucimexp_h", ["ucimexpgh1", "bob", "alice", "carol"])
    assert client.calls == [
        ["sacctmgr", "-nP", "show", "user", "where", "name=alice,bob,carol,ucimexpgh1", "withassoc",
         "format=user,defaultaccount,account"],
        # bob's default was ucimexp_h: sacctmgr would leave him none, and sbatch without --account would fail.
        ["sacctmgr", "-i", "modify", "user", "where", "name=bob", "set", "defaultaccount=ucimproj"],
        # Those who keep other accounts (carol is unknown to Slurm: nothing to do, no error)...
        ["sacctmgr", "-i", "remove", "user", "where", "name=alice,bob,carol", "account=ucimexp_h"],
        # ...and apart from them the one who leaves his last: together sacctmgr refuses both (DEFAULT_REFUSED).
        ["sacctmgr", "-i", "remove", "user", "where", "name=ucimexpgh1", "account=ucimexp_h"],
    ]  # fmt: skip


def test_the_mixed_removal_sacctmgr_refuses_is_a_refusal() -> None:
    error = sacctmgr.failure("removing", 1, "", DEFAULT_REFUSED, ["sacctmgr"])
    assert type(error) is SacctmgrRefusedError and "Changes Discarded" in error.detail


async def test_remove_users_of_their_last_account_is_one_call() -> None:
    # ghost is only in ucimexp_f: sacctmgr deletes the Slurm user with its last association.
    client = Replay(
        {("sacctmgr", "show"): (0, "ghost|ucimexp_f|ucimexp_f\n", ""), ("sacctmgr", "remove"): (1, NOTHING_DELETED, "")}
    )
    await SlurmAccounts(client=client).remove_users("ucimexp_f", ["ghost"])
    assert [c[2] for c in client.calls] == ["show", "remove"]


async def test_set_limits_of_a_missing_account_is_refused() -> None:
    client = Replay({("sacctmgr", "modify"): (0, " Modified account associations...\n", "")})
    accounts = SlurmAccounts(client=client)
    await accounts.set_limits("ucimexp_a", locked=True, quota_minutes=100, fairshare=None)
    assert client.calls[-1][-3:] == ["set", "maxjobs=0", "grptresmins=billing=100"]
    client.answers[("sacctmgr", "modify")] = (1, NOTHING_MODIFIED, "")
    before = calls_total("modify", "refused")
    with pytest.raises(SacctmgrRefusedError, match="there is no Slurm account ucimexp_nonexist"):
        await accounts.set_limits("ucimexp_nonexist", locked=False, quota_minutes=None, fairshare=None)
    assert calls_total("modify", "refused") == before + 1


async def test_delete_account() -> None:
    client = Replay({("sacctmgr", "delete"): (1, NOTHING_DELETED, "")})
    accounts = SlurmAccounts(client=client)
    assert await accounts.delete_account("ucimexp_a") is False
    client.answers[("sacctmgr", "delete")] = (1, "", JOBS_ACTIVE)
    with pytest.raises(SacctmgrRefusedError, match="Job\\(s\\) active"):
        await accounts.delete_account("ucimexp_j")


async def test_slurmdbd_down_is_retryable_and_counted() -> None:
    client = Replay({("sacctmgr", "show"): (1, "", SLURMDBD_DOWN), ("sshare", ""): (255, "", SLURMCTLD_DOWN)})
    accounts = SlurmAccounts(client=client)
    before = calls_total("show", "unavailable")
    with pytest.raises(SlurmUnavailableError, match="Connection refused"):
        await accounts.snapshot()
    assert calls_total("show", "unavailable") == before + 1
    with pytest.raises(SlurmUnavailableError, match="Unable to contact slurm controller"):
        await accounts.usage_minutes()
    # A refusal of sshare is a plain SlurmError.
    client.answers[("sshare", "")] = (1, "", "sshare: error: You are not running a supported priority plugin\n")
    with pytest.raises(SlurmError) as caught:
        await accounts.usage_minutes()
    assert not isinstance(caught.value, SlurmUnavailableError)


ACCOUNT_CALLS = [
    ("ensure_account", {"description": "x", "organization": "x"}),
    ("set_limits", {"locked": True, "quota_minutes": None, "fairshare": None}),
    ("delete_account", {}),
    ("add_users", {"users": ["alice"]}),
    ("remove_users", {"users": ["alice"]}),
]


@pytest.mark.parametrize("name", HOSTILE)
@pytest.mark.parametrize(("method", "kwargs"), ACCOUNT_CALLS)
async def test_hostile_account_names_run_no_command(name: str, method: str, kwargs: dict[str, Any]) -> None:
    client = Replay()
    with pytest.raises(SlurmNameError):
        await getattr(SlurmAccounts(client=client), method)(name, **kwargs)
    assert client.calls == []


@pytest.mark.parametrize("user", HOSTILE)
@pytest.mark.parametrize("method", ["add_users", "remove_users"])
async def test_hostile_user_names_run_no_command(user: str, method: str) -> None:
    client = Replay()
    with pytest.raises(SlurmNameError):
        await getattr(SlurmAccounts(client=client), method)("ucimexp_a", ["alice", user])
    assert client.calls == []


async def test_hostile_descriptions_run_no_command() -> None:
    client = Replay()
    with pytest.raises(SlurmNameError, match="description"):
        await SlurmAccounts(client=client).ensure_account("a", description="x'; drop table", organization="")
    assert client.calls == []


def test_cluster_and_parent_are_checked() -> None:
    with pytest.raises(SlurmNameError):
        SlurmAccounts(client=Replay(), cluster="a b")
    with pytest.raises(SlurmNameError):
        SlurmAccounts(client=Replay(), parent="root")


async def test_commands_go_through_the_configured_client(tmp_path: Path) -> None:
    # A stand-in sacctmgr binary: the config's bin_dir, SLURM_CONF and environment reach it; no shell.
    (tmp_path / "sacctmgr").write_text(
        f'#!/bin/sh\necho "$SLURM_CONF $LC_ALL" > {tmp_path}/env\nprintf "%s\\n" "$@" > {tmp_path}/args\n'
        "echo 'acct||0|billing=6|2'\n"
    )
    (tmp_path / "sacctmgr").chmod(0o755)
    config = SlurmConfig(bin_dir=tmp_path, slurm_conf=Path("/etc/slurm/x.conf"), env={"PATH": "/usr/bin:/bin"})
    state = (await SlurmAccounts(config).snapshot())["acct"]
    assert (state.locked, state.quota_minutes, state.fairshare) == (True, 6, 2)
    assert (tmp_path / "env").read_text().split() == ["/etc/slurm/x.conf", "C"]
    assert (tmp_path / "args").read_text().splitlines() == sacctmgr.show_associations_args(None)
