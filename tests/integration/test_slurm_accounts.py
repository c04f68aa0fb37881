"""ucim.slurm_bridge.slurm_accounts against the real Slurm of the local platform: a workspace account's life.

The bridge's side (sacctmgr, sshare) runs as root; jobs are alice's and bob's own, submitted from
processes that dropped to their uid (test_slurm_cli's ``AsUser``). Every account is named
``ucimit_<random>`` and deleted at the end, its jobs cancelled first, however the test ends. Run under
the platform's lock (``flock /tmp/ucim-platform.lock``): slurmdbd is shared.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration import test_slurm_cli as cli
from ucim.common.slurm import SlurmClient, SlurmConfig
from ucim.common.slurm_errors import SlurmRejectedError, SlurmUnavailableError
from ucim.common.slurm_parsing import SlurmJobInfo
from ucim.slurm_bridge.accounts_view import AccountsView
from ucim.slurm_bridge.sacctmgr import AccountState, SacctmgrRefusedError, SlurmNameError
from ucim.slurm_bridge.slurm_accounts import SlurmAccounts

pytestmark = pytest.mark.integration

# test_slurm_cli's fixtures and helpers: the platform's slurm.conf, root's client, alice and bob as themselves.
slurm_conf = cli.slurm_conf
bridge = cli.bridge
alice = cli.alice
bob = cli.bob
workdir = cli.workdir
submitted = cli.submitted
AsUser = cli.AsUser
BASE_PATH = cli.BASE_PATH
job_name = cli.job_name
write_script = cli.write_script

# The platform's own project account: alice's and bob's default, which other tests rely on.
PLATFORM_ACCOUNT = "ucimproj"


@pytest.fixture(scope="module")
def accounts(slurm_conf: Path) -> SlurmAccounts:
    return SlurmAccounts(SlurmConfig(slurm_conf=slurm_conf, env={"PATH": BASE_PATH}, timeout_seconds=60))


def tool(slurm_conf: Path, *argv: str, check: bool = True) -> str:
    """Run a Slurm tool as root (for what the test checks or sets up on the side); its stdout."""
    env = {"PATH": BASE_PATH, "SLURM_CONF": str(slurm_conf)}
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=check, timeout=60).stdout


@pytest.fixture
def account(accounts: SlurmAccounts, bridge: SlurmClient, slurm_conf: Path) -> Iterator[str]:
    """A fresh account name; afterwards its jobs are cancelled and the account deleted."""
    name = f"ucimit_{uuid.uuid4().hex[:10]}"
    yield name
    ids = [int(word) for word in tool(slurm_conf, "squeue", "-h", "-A", name, "-o", "%A").split() if word.isdigit()]
    asyncio.run(bridge.cancel(ids))
    # slurmdbd refuses to delete an account while it has jobs it has not seen end.
    deadline = time.monotonic() + 30
    while True:
        try:
            asyncio.run(accounts.delete_account(name))
            break
        except SacctmgrRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


@pytest.fixture
def bob_workdir(bob: cli.AsUser) -> Iterator[Path]:
    """A job folder of bob's (alice's is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="ucim-accounts-it-"))
    pw = pwd.getpwnam(bob.user)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def enforcement(slurm_conf: Path) -> str:
    """AccountingStorageEnforce as slurmctld has it ('' when unset)."""
    for line in tool(slurm_conf, "scontrol", "show", "config").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "AccountingStorageEnforce":
            return value.strip()
    return ""


def poll_of(bridge: SlurmClient, job: int) -> Callable[[], SlurmJobInfo | None]:
    return lambda: asyncio.run(bridge.poll([job])).get(job)


def wait_for(
    poll: Callable[[], SlurmJobInfo | None], until: Callable[[SlurmJobInfo], bool], timeout: float
) -> SlurmJobInfo:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = poll()
        if last is not None and until(last):
            return last
        time.sleep(0.5)
    raise AssertionError(f"the job never got there within {timeout:g} s; last seen {last}")


def user_defaults(slurm_conf: Path, *users: str) -> dict[str, str]:
    out = tool(slurm_conf, "sacctmgr", "-nP", "show", "user", "where", f"name={','.join(users)}",
               "format=user,defaultaccount")  # fmt: skip
    return dict(line.split("|", 1) for line in out.splitlines() if line)


# --------------------------------------------------------------------------- membership and limits


def test_an_account_is_created_once_and_holds_exactly_its_members(
    accounts: SlurmAccounts,
    account: str,
    slurm_conf: Path,
) -> None:
    run = asyncio.run
    assert run(accounts.ensure_account(account, description="ucim integration test", organization="ucim")) is True
    assert run(accounts.ensure_account(account, description="ucim integration test", organization="ucim")) is False
    assert run(accounts.snapshot())[account] == AccountState(name=account, fairshare=1)

    run(accounts.add_users(account, ["alice", "bob"]))
    run(accounts.add_users(account, ["alice"]))  # already there: no error
    assert run(accounts.snapshot())[account].users == {"alice", "bob"}
    run(accounts.remove_users(account, ["bob"]))
    run(accounts.remove_users(account, ["bob"]))  # already gone: no error
    assert run(accounts.snapshot())[account].users == {"alice"}
    # Nobody's default account moved: this was nobody's default.
    assert user_defaults(slurm_conf, "alice", "bob") == {
        "alice": PLATFORM_ACCOUNT,
        "bob": PLATFORM_ACCOUNT,
    }

    run(accounts.set_limits(account, locked=True, quota_minutes=6000, fairshare=4))
    state = run(accounts.snapshot())[account]
    assert (state.locked, state.quota_minutes, state.fairshare) == (True, 6000, 4)
    run(accounts.set_limits(account, locked=True, quota_minutes=6000, fairshare=4))  # the same again: fine
    run(accounts.set_limits(account, locked=False, quota_minutes=None, fairshare=None))
    state = run(accounts.snapshot())[account]
    assert (state.locked, state.max_jobs, state.grp_tres_mins, state.fairshare) == (False, None, {}, 4)

    with pytest.raises(SacctmgrRefusedError, match="there is no Slurm account"):
        run(accounts.set_limits(f"{account}x", locked=True, quota_minutes=None, fairshare=None))
    with pytest.raises(SacctmgrRefusedError, match="doesn't exist"):
        run(accounts.add_users(f"{account}x", ["alice"]))
    # A comma would have made sacctmgr create two accounts: refused before any command.
    with pytest.raises(SlurmNameError):
        run(accounts.ensure_account(f"{account}x,{account}y", description="", organization=""))
    assert not {f"{account}x", f"{account}y"} & set(run(accounts.snapshot()))


def test_the_view_records_its_changes_as_slurm_then_shows_them(
    accounts: SlurmAccounts,
    account: str,
    slurm_conf: Path,
) -> None:
    async def scenario() -> None:
        view = AccountsView(accounts, resync_seconds=600)
        await view.resync()
        await view.ensure_account(account, description="ucim integration test", organization="ucim")
        await view.add_users(account, ["alice", "bob"])
        await view.set_limits(account, locked=True, quota_minutes=600, fairshare=2)
        await view.remove_users(account, ["bob"])
        recorded = view[account]
        assert recorded == AccountState(account, frozenset({"alice"}), 0, {"billing": 600}, 2)
        assert account not in await view.resync()
        assert view[account] == recorded
        await view.set_limits(account, locked=False, quota_minutes=None, fairshare=None)
        assert account not in await view.resync()
        # A view that never read it (made since its last read): ensure_account finds it there and reads it alone.
        assert (
            await AccountsView(accounts, resync_seconds=600).ensure_account(account, description="", organization="")
            == view[account]
        )
        # Changed by hand: the next read says so.
        tool(slurm_conf, "sacctmgr", "-i", "modify", "account", "where", f"name={account}", "set", "maxjobs=0")
        assert account in await view.resync()
        assert view[account].locked

    asyncio.run(scenario())


def test_default_accounts_and_unknown_users(
    accounts: SlurmAccounts,
    account: str,
    slurm_conf: Path,
) -> None:
    run = asyncio.run
    ghost = f"ucimitghost{uuid.uuid4().hex[:6]}"  # no such local user, and unknown to Slurm
    run(accounts.ensure_account(account, description="", organization=""))
    try:
        # An unknown user becomes a Slurm user, with this account as default.
        run(accounts.add_users(account, [ghost, "bob"]))
        assert user_defaults(slurm_conf, ghost) == {ghost: account}
        # bob's default is this account now; leaving it gives him back his other one (sacctmgr would leave
        # him none, and his sbatch without --account would fail).
        tool(slurm_conf, "sacctmgr", "-i", "modify", "user", "where", "name=bob", "set", f"defaultaccount={account}")
        assert user_defaults(slurm_conf, "bob") == {"bob": account}
        run(accounts.remove_users(account, ["bob", ghost]))
        # The first of his others by name: the platform's, unless earlier runs left him personal ones (bob_cpu).
        others = tool(slurm_conf, "sacctmgr", "-nP", "show", "assoc", "where", "user=bob", "format=account")
        assert PLATFORM_ACCOUNT in others.split()
        assert user_defaults(slurm_conf, "bob") == {"bob": min(others.split())}
        # The ghost's last association is gone, and sacctmgr deleted the user with it.
        assert user_defaults(slurm_conf, ghost) == {}
        assert run(accounts.snapshot())[account].users == frozenset()
    finally:
        # Whatever happened: bob's default as the platform made it, and no ghost left in Slurm.
        default = f"defaultaccount={PLATFORM_ACCOUNT}"
        tool(slurm_conf, "sacctmgr", "-i", "modify", "user", "where", "name=bob", "set", default, check=False)
        tool(slurm_conf, "sacctmgr", "-i", "delete", "user", "where", f"name={ghost}", check=False)


# --------------------------------------------------------------------------- what Slurm does with the limits


def test_locked_accounts_hold_jobs_and_quotas_stop_them(
    *,
    accounts: SlurmAccounts,
    account: str,
    slurm_conf: Path,
    alice: AsUser,
    bob: AsUser,
    bridge: SlurmClient,
    workdir: Path,
    bob_workdir: Path,
    submitted: list[int],
) -> None:
    enforced = enforcement(slurm_conf)
    if not {"associations", "limits"} <= set(enforced.split(",")):
        pytest.skip(
            f"slurmctld does not enforce associations and limits (AccountingStorageEnforce={enforced or 'unset'}):"
            " maxjobs and grptresmins would be recorded but not applied"
        )
    run = asyncio.run
    run(accounts.ensure_account(account, description="", organization=""))
    run(accounts.set_limits(account, locked=True, quota_minutes=None, fairshare=None))
    run(accounts.add_users(account, ["alice"]))

    # Not a member: sbatch refuses at once.
    with pytest.raises(SlurmRejectedError, match="Slurm account is not valid"):
        script = write_script(bob_workdir, "true", f"--job-name={job_name()}", f"--account={account}")
        bob.submit(script, cwd=bob_workdir)

    # Locked: sbatch accepts alice's job, and it waits. 4 CPUs for 20 s are 80 billing-seconds (CPU=1.0).
    script = write_script(
        workdir, "sleep 20", f"--job-name={job_name()}", f"--account={account}", "--ntasks=4", "--time=2"
    )
    job = alice.submit(script, cwd=workdir)
    submitted.append(job)
    poll = poll_of(bridge, job)
    pending = wait_for(poll, lambda i: i.reason == "AssocMaxJobsLimit", 30)
    assert pending.state == "PENDING"
    time.sleep(3)
    assert poll().state == "PENDING"  # type: ignore[union-attr]

    # Unlocked: the same job starts, without being submitted again.
    unlocked_at = time.monotonic()
    run(accounts.set_limits(account, locked=False, quota_minutes=None, fairshare=None))
    wait_for(poll, lambda i: i.state != "PENDING", 120)
    print(f"the held job started {time.monotonic() - unlocked_at:.1f} s after the unlock")
    wait_for(poll, lambda i: i.is_finished, 60)

    # Its use is the account's: at least the 80 s of 4 CPUs, in whole billing minutes.
    used = run(accounts.usage_minutes())[account]
    assert used >= 1

    # A quota already used up: the next job waits for it.
    run(accounts.set_limits(account, locked=False, quota_minutes=used, fairshare=None))
    job = alice.submit(write_script(workdir, "true", f"--job-name={job_name()}", f"--account={account}"), cwd=workdir)
    submitted.append(job)
    assert wait_for(poll_of(bridge, job), lambda i: i.reason is not None, 30).reason == "AssocGrpBillingMinutes"
    assert run(accounts.snapshot())[account].quota_minutes == used


# --------------------------------------------------------------------------- slurmdbd out of reach


def test_slurmdbd_out_of_reach_is_retryable(slurm_conf: Path, tmp_path: Path) -> None:
    # The same cluster through a slurm.conf whose slurmdbd port nobody listens on (the platform is untouched).
    conf = tmp_path / "slurm.conf"
    lines = [
        "AccountingStoragePort=1" if line.startswith("AccountingStoragePort=") else line
        for line in slurm_conf.read_text().splitlines()
    ]
    conf.write_text("\n".join(lines) + "\n")
    unreachable = SlurmAccounts(SlurmConfig(slurm_conf=conf, env={"PATH": BASE_PATH}, timeout_seconds=60))
    with pytest.raises(SlurmUnavailableError, match="Connection refused"):
        asyncio.run(unreachable.snapshot())
    with pytest.raises(SlurmUnavailableError, match="Connection refused"):
        asyncio.run(unreachable.ensure_account("ucimit_never", description="", organization=""))
