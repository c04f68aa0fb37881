"""The workspace controller's view of Slurm's accounts: read in full now and then, kept up to date by its changes.

Reading every account and association (one ``sacctmgr show assoc``) took ~1.2 ms per account with members,
~12 s at 10,000, and is 0.3 s with ``wopinfo`` (:mod:`ucim.slurm_bridge.slurm_accounts`); read before every
reconcile pass, it stood in front of every change at Core, and it is slurmdbd's work on a site's whole
tree. So :class:`AccountsView` holds that listing in memory:

* **Resync.** The whole listing is read at the start, every ``resync_seconds``, and before the next pass after
  any change that failed (a refused or timed-out sacctmgr call may have changed part of it, or nothing). It is
  the drift check: slurmdbd has nothing to watch, so this is the controller's resync period, as
  controller-runtime's ``SyncPeriod``. :meth:`~AccountsView.resync` says which accounts differ from the view
  (someone changed Slurm by hand); the controller reconciles their workspaces again, which repairs the drift.
* **Changes** go through the view: it runs them and, once one succeeded, records its result (an account
  created, users added or removed, limits set), so the next pass diffs against the view, asking Slurm nothing.
* **An account the view does not hold** is created (``ensure_account``, one call, idempotent); when it was
  there all the same (made since the last resync), that one account is read (``show assoc where account=``,
  ~0.27 s whatever the number of accounts).

Everything here runs in the controller's one reconcile loop, one call at a time, so a resync never races a
change; changes wait for the read (0.3 s at 10,000 accounts on the 2-core VM, once every ``resync_seconds``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Protocol

from ucim.slurm_bridge.sacctmgr import BILLING, AccountState


class Accounts(Protocol):
    """Slurm's side of the workspaces (:class:`ucim.slurm_bridge.slurm_accounts.SlurmAccounts`)."""

    async def snapshot(self) -> dict[str, AccountState]: ...
    async def account(self, name: str) -> AccountState | None: ...
    async def ensure_account(self, name: str, *, description: str, organization: str) -> bool: ...
    async def add_users(self, name: str, users: Collection[str]) -> None: ...
    async def remove_users(self, name: str, users: Collection[str]) -> None: ...
    async def set_limits(
        self, name: str, *, locked: bool, quota_minutes: int | None, fairshare: int | None
    ) -> None: ...
    async def usage_minutes(self) -> dict[str, int]: ...


class AccountsView(Mapping[str, AccountState]):
    """Slurm's accounts as last read, with the changes made through this view since (module docstring).

    ``resync_seconds`` 0 reads them all before every pass. The mapping is account name → state.
    """

    def __init__(self, slurm: Accounts, *, resync_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.slurm = slurm
        self.resync_seconds = resync_seconds
        self._clock = clock
        self._accounts: dict[str, AccountState] = {}
        self._read_at: float | None = None  # None: never read
        self._unsure = False  # a change failed since the last read

    def __getitem__(self, name: str) -> AccountState:
        return self._accounts[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._accounts)

    def __len__(self) -> int:
        return len(self._accounts)

    # --- reading everything ---------------------------------------------------------------

    def resync_due(self) -> bool:
        """Never read, a change failed since, or ``resync_seconds`` have passed since the last read."""
        return self._read_at is None or self._unsure or self._clock() - self._read_at >= self.resync_seconds

    async def resync(self) -> set[str]:
        """Read every account; the names of those that differ from the view (none on the first read)."""
        started = self._clock()
        fresh = await self.slurm.snapshot()
        before, self._accounts = self._accounts, fresh
        first, self._read_at, self._unsure = self._read_at is None, started, False
        if first:
            return set()
        return {name for name in before.keys() | fresh.keys() if before.get(name) != fresh.get(name)}

    # --- changes, recorded once they succeeded ----------------------------------------------

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """A change that fails leaves the view unsure of what Slurm holds: all is read again first."""
        try:
            yield
        except BaseException:
            self._unsure = True
            raise

    async def ensure_account(self, name: str, *, description: str, organization: str) -> AccountState:
        """The account as Slurm holds it: from the view; else created (empty) or, if it existed, read."""
        if (known := self._accounts.get(name)) is not None:
            return known
        with self._changing():
            if await self.slurm.ensure_account(name, description=description, organization=organization):
                # As ensure_account makes it: no members, no limits, fairshare 1.
                state: AccountState | None = AccountState(name, fairshare=1)
            else:
                state = await self.slurm.account(name)
            if state is None:
                raise LookupError(f"Slurm account {name} was there when created and gone when read")
        self._accounts[name] = state
        return state

    async def add_users(self, name: str, users: Collection[str]) -> None:
        with self._changing():
            await self.slurm.add_users(name, users)
        self._record(name, lambda a: dataclasses.replace(a, users=a.users | frozenset(users)))

    async def remove_users(self, name: str, users: Collection[str]) -> None:
        with self._changing():
            await self.slurm.remove_users(name, users)
        self._record(name, lambda a: dataclasses.replace(a, users=a.users - frozenset(users)))

    async def set_limits(self, name: str, *, locked: bool, quota_minutes: int | None, fairshare: int | None) -> None:
        with self._changing():
            await self.slurm.set_limits(name, locked=locked, quota_minutes=quota_minutes, fairshare=fairshare)

        def limited(a: AccountState) -> AccountState:
            # As sacctmgr shows it then: maxjobs=-1 is empty, billing=-1 drops only billing, fairshare None is kept.
            tres = {k: v for k, v in a.grp_tres_mins.items() if k != BILLING}
            if quota_minutes is not None:
                tres[BILLING] = quota_minutes
            fair = a.fairshare if fairshare is None else fairshare
            return dataclasses.replace(a, max_jobs=0 if locked else None, grp_tres_mins=tres, fairshare=fair)

        self._record(name, limited)

    def _record(self, name: str, change: Callable[[AccountState], AccountState]) -> None:
        # An account the view does not hold stays unknown (not guessed): ensure_account reads it when needed.
        if (known := self._accounts.get(name)) is not None:
            self._accounts[name] = change(known)
