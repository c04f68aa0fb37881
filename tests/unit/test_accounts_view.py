"""The controller's view of Slurm's accounts: read in full only when due, kept up to date by its own changes."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Collection

import pytest

from ucim.common.slurm_errors import SlurmUnavailableError
from ucim.slurm_bridge.accounts_view import AccountsView
from ucim.slurm_bridge.sacctmgr import AccountState, SacctmgrRefusedError


class FakeSlurm:
    """Slurm's accounts as sacctmgr keeps them (what slurm_accounts.py documents), with every call counted."""

    def __init__(self) -> None:
        self.accounts: dict[str, AccountState] = {}
        self.calls: list[str] = []
        self.refuse: str | None = None  # the next change of this kind is refused

    def _call(self, kind: str) -> None:
        self.calls.append(kind)
        if self.refuse == kind:
            self.refuse = None
            raise SacctmgrRefusedError(f"{kind} refused")

    async def snapshot(self) -> dict[str, AccountState]:
        self._call("snapshot")
        return dict(self.accounts)

    async def account(self, name: str) -> AccountState | None:
        self._call("account")
        return self.accounts.get(name)

    async def ensure_account(self, name: str, *, description: str, organization: str) -> bool:
        self._call("ensure")
        if name in self.accounts:
            return False
        self.accounts[name] = AccountState(name, fairshare=1)
        return True

    async def add_users(self, name: str, users: Collection[str]) -> None:
        self._call("add")
        old = self.accounts[name]
        self.accounts[name] = dataclasses.replace(old, users=old.users | set(users))

    async def remove_users(self, name: str, users: Collection[str]) -> None:
        self._call("remove")
        old = self.accounts[name]
        self.accounts[name] = dataclasses.replace(old, users=old.users - set(users))

    async def set_limits(self, name: str, *, locked: bool, quota_minutes: int | None, fairshare: int | None) -> None:
        self._call("limits")
        old = self.accounts[name]
        tres = {k: v for k, v in old.grp_tres_mins.items() if k != "billing"}
        if quota_minutes is not None:
            tres["billing"] = quota_minutes
        fair = old.fairshare if fairshare is None else fairshare
        self.accounts[name] = AccountState(name, old.users, 0 if locked else None, tres, fair)

    async def usage_minutes(self) -> dict[str, int]:
        return {}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def slurm() -> FakeSlurm:
    slurm = FakeSlurm()
    # An account of the site's own, with limits the bridge never sets: kept as it is.
    slurm.accounts["site"] = AccountState("site", frozenset({"carol"}), None, {"cpu": 10, "billing": 5}, 3)
    return slurm


async def test_all_is_read_at_first_and_then_only_when_due(slurm: FakeSlurm) -> None:
    clock = Clock()
    view = AccountsView(slurm, resync_seconds=600, clock=clock)
    assert view.resync_due()
    assert await view.resync() == set()  # the first read finds nothing changed: there was nothing before
    assert dict(view) == slurm.accounts and not view.resync_due()
    clock.now += 599
    assert not view.resync_due()
    clock.now += 1
    assert view.resync_due()
    # 0: every pass reads all, as before the view.
    assert AccountsView(slurm, resync_seconds=0, clock=clock).resync_due()


async def test_applied_changes_update_the_view_and_a_resync_then_finds_nothing_changed(slurm: FakeSlurm) -> None:
    view = AccountsView(slurm, resync_seconds=600)
    await view.resync()
    slurm.calls.clear()

    created = await view.ensure_account("p1_cpu", description="UCloud cpu", organization="p1")
    assert created == AccountState("p1_cpu", fairshare=1) == view["p1_cpu"]
    await view.add_users("p1_cpu", ["alice", "bob"])
    await view.set_limits("p1_cpu", locked=True, quota_minutes=600, fairshare=2)
    await view.remove_users("p1_cpu", ["bob"])
    await view.set_limits("site", locked=False, quota_minutes=None, fairshare=None)
    assert view["p1_cpu"] == AccountState("p1_cpu", frozenset({"alice"}), 0, {"billing": 600}, 2)
    # billing=-1 drops only billing; fairshare None keeps it.
    assert view["site"] == AccountState("site", frozenset({"carol"}), None, {"cpu": 10}, 3)
    # An account the view holds is not created again, and nothing was read.
    assert await view.ensure_account("p1_cpu", description="", organization="") is view["p1_cpu"]
    assert "snapshot" not in slurm.calls and "account" not in slurm.calls
    assert dict(view) == slurm.accounts
    assert await view.resync() == set()


async def test_an_account_made_since_the_last_read_is_read_alone(slurm: FakeSlurm) -> None:
    view = AccountsView(slurm, resync_seconds=600)
    await view.resync()
    slurm.accounts["p2_cpu"] = AccountState("p2_cpu", frozenset({"bob"}), 0, {"billing": 60}, 1)  # by hand
    slurm.calls.clear()
    state = await view.ensure_account("p2_cpu", description="", organization="")
    assert state == slurm.accounts["p2_cpu"] == view["p2_cpu"]
    assert slurm.calls == ["ensure", "account"]


async def test_a_resync_says_which_accounts_changed_by_hand(slurm: FakeSlurm) -> None:
    view = AccountsView(slurm, resync_seconds=600)
    await view.resync()
    await view.ensure_account("p1_cpu", description="", organization="")
    await view.ensure_account("p2_cpu", description="", organization="")
    await view.add_users("p1_cpu", ["alice"])
    # By hand: a member removed, a limit set, an account deleted, one made.
    slurm.accounts["p1_cpu"] = dataclasses.replace(slurm.accounts["p1_cpu"], users=frozenset())
    slurm.accounts["site"] = dataclasses.replace(slurm.accounts["site"], max_jobs=0)
    del slurm.accounts["p2_cpu"]
    slurm.accounts["new"] = AccountState("new")
    assert await view.resync() == {"p1_cpu", "site", "p2_cpu", "new"}
    assert dict(view) == slurm.accounts


CHANGES: dict[str, Callable[[AccountsView], Awaitable[object]]] = {
    "ensure": lambda view: view.ensure_account("p3_cpu", description="", organization=""),
    "add": lambda view: view.add_users("p1_cpu", ["bob"]),
    "remove": lambda view: view.remove_users("p1_cpu", ["alice"]),
    "limits": lambda view: view.set_limits("p1_cpu", locked=True, quota_minutes=1, fairshare=1),
}


@pytest.mark.parametrize("kind", sorted(CHANGES))
async def test_a_failed_change_is_not_recorded_and_all_is_read_again(slurm: FakeSlurm, kind: str) -> None:
    view = AccountsView(slurm, resync_seconds=600)
    await view.resync()
    await view.ensure_account("p1_cpu", description="", organization="")
    await view.add_users("p1_cpu", ["alice"])
    known = dict(view)
    slurm.refuse = kind
    with pytest.raises(SacctmgrRefusedError):
        await CHANGES[kind](view)
    assert dict(view) == known
    assert view.resync_due()
    await view.resync()
    assert not view.resync_due() and dict(view) == slurm.accounts


async def test_a_failed_read_leaves_the_view_as_it_was_and_due(slurm: FakeSlurm) -> None:
    view = AccountsView(slurm, resync_seconds=600)

    async def unavailable() -> dict[str, AccountState]:
        raise SlurmUnavailableError("sacctmgr show assoc failed", detail="Connection refused")

    real, slurm.snapshot = slurm.snapshot, unavailable  # type: ignore[method-assign]
    with pytest.raises(SlurmUnavailableError):
        await view.resync()
    assert view.resync_due() and len(view) == 0
    slurm.snapshot = real  # type: ignore[method-assign]
    assert await view.resync() == set()  # still the first read
    assert "site" in view
