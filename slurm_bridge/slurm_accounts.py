"""The workspaces' Slurm accounts as sacctmgr and sshare see them: read all at once, change one at a time.

:class:`SlurmAccounts` is what the bridge's account reconciler (issue 15) drives. It reads the state of
every account in **one** ``sacctmgr show assoc`` (:meth:`~SlurmAccounts.snapshot`) and the usage of
every account in **one** ``sshare`` (:meth:`~SlurmAccounts.usage_minutes`), and changes an account with one
sacctmgr call per kind of change. Commands go through :meth:`ucim.common.slurm.SlurmClient.run` (argv, the
configured ``SLURM_CONF`` and environment, the timeout); names are checked before any command runs and
each reaches sacctmgr as one argv element (:mod:`ucim.slurm_bridge.sacctmgr`, which also says what
sacctmgr answers in each case).

Cost
====
Measured on the local platform (Slurm 22.05.8, MariaDB, 2 cores), medians: the bare sacctmgr commands timed
with ``time``, 10,000 through this class (``python -m bench accounting --accounts 10000``), sshare through it
with 2 members an account (``python -m bench accounts``):

=====================  ============================  =========================  ============================
accounts               ``snapshot()`` (``wopinfo``)  ``show assoc`` without it  ``usage_minutes()`` (sshare)
=====================  ============================  =========================  ============================
0 (5 rows)             0.26 s                        0.27 s                     4 ms
1,000 (1 member each)  0.23 s                        1.45 s                     15 ms
3,000 (1 member each)  0.25 s                        3.7 s                      0.10 s
10,000 (no members)    0.32 s                        0.26 s
=====================  ============================  =========================  ============================

Without ``wopinfo`` slurmdbd fills each user row's limits in from its account (a query per account with
members, ~1.2 ms each: ~12 s at 10,000); the account rows, the only ones read for limits, are the same
(:mod:`ucim.slurm_bridge.sacctmgr`). Fewer fields did not help. A change costs one call of ~0.26 s plus little
per account in the database (``ensure_account`` of an existing account and ``set_limits`` took 0.36 s each at
1,000 and at 10,000; :meth:`account`, one account's rows, 0.27 s at 10,000). sshare answers from slurmctld's
memory, but its own CPU time grows faster than the account count (``-a``, with user rows: 0.08 s at 1,000, 0.6 s
at 3,000; hence account rows only).

So the reconciler need not read before it writes: every change here is idempotent, and an event (a wallet, a
project) can go straight to sacctmgr. The workspace controller keeps the snapshot as its view and reads it again
only every few minutes, to find changes made by hand (:mod:`ucim.slurm_bridge.accounts_view`). slurmctld's copy of
the same facts, ``scontrol show assoc_mgr flags=assoc`` (with usage), took 0.04 s at 1,000 and 0.14 s at 3,000
accounts; it is multi-line text for people, and only as fresh as slurmctld's link to slurmdbd.

Decisions, where sacctmgr leaves a choice:

* **A user Slurm does not know** is created by ``add user`` with the account as default account: ucim maps
  only existing local users (:mod:`ucim.slurm_bridge.mapping`), and a member that is missing from Slurm
  could otherwise run nothing. (UCloud/IM adds only users Slurm knows already.)
* **Removing a user's default account** leaves them with none (sacctmgr writes an empty default), and
  then every ``sbatch`` without ``--account`` fails with "Invalid account or account/partition combination
  specified". So a user whose default is the account being left, and who keeps other accounts, gets one of
  them as default first (the first by name). Removing a user's last association makes sacctmgr delete the
  Slurm user ("Deleting users (No Associations)"), which is right: they have no workspace here any more.
  But one ``remove user`` call that takes one user's last (default) association and leaves another user
  with associations is refused as a whole ("You can not remove the default account of a user ... Changes
  Discarded"); each kind alone passes. So those leaving their last account are removed in a call of their
  own.
* **Locking** is ``maxjobs=0``: sbatch still accepts a job of the account and it waits, PENDING with reason
  ``AssocMaxJobsLimit``; after the unlock it starts at the scheduler's next pass (8-25 s here), not
  submitted again. A job of a user who is not a member is refused by sbatch ("Invalid account or
  account/partition combination specified"). A quota (``grptresmins=billing=Q``) that a
  job would overrun makes it wait with ``AssocGrpBillingMinutes`` (``safe`` enforcement).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Final, Literal, get_args

from prometheus_client import Counter, Histogram

from ucim.common.slurm import CommandResult, SlurmClient, SlurmConfig
from ucim.common.slurm_errors import SlurmError, SlurmUnavailableError
from ucim.slurm_bridge import sacctmgr
from ucim.slurm_bridge.sacctmgr import (
    AccountState,
    Outcome,
    SacctmgrRefusedError,
    Verb,
    check_account_name,
    check_cluster_name,
    check_free_text,
    check_user_names,
)

log = logging.getLogger(__name__)

Result = Literal["ok", "refused", "unavailable"]

SACCTMGR_CALLS: Final = Counter(
    "ucim_sacctmgr_calls_total",
    "sacctmgr calls by verb (show, create, add, remove, modify, delete) and result (ok, refused, unavailable).",
    ["verb", "result"],
)
SACCTMGR_SECONDS: Final = Histogram(
    "ucim_sacctmgr_duration_seconds",
    "Duration of sacctmgr calls by verb; a snapshot (show) of 3,000 accounts takes ~0.25 s.",
    ["verb"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
# Every series exists from the start, so rate() and alerts see the first call.
for _verb in get_args(Verb):
    SACCTMGR_SECONDS.labels(_verb)
    for _result in get_args(Result):
        SACCTMGR_CALLS.labels(_verb, _result)


@contextlib.contextmanager
def _counted(verb: Verb) -> Iterator[None]:
    """Count and time one sacctmgr call; its result is the exception that leaves the block, if any."""
    started = time.perf_counter()
    result: Result = "ok"
    try:
        yield
    except SlurmUnavailableError:
        result = "unavailable"
        raise
    except SlurmError:
        result = "refused"
        raise
    finally:
        SACCTMGR_SECONDS.labels(verb).observe(time.perf_counter() - started)
        SACCTMGR_CALLS.labels(verb, result).inc()


class SlurmAccounts:
    """sacctmgr and sshare for the bridge (root); built from the SlurmConfig the SlurmClient uses.

    ``cluster`` limits every read and change to one cluster of a slurmdbd that serves several; ``parent`` is
    the account new accounts go under (Slurm's ``root`` when None).
    """

    def __init__(
        self,
        config: SlurmConfig | None = None,
        *,
        cluster: str | None = None,
        parent: str | None = None,
        client: SlurmClient | None = None,
    ) -> None:
        self.client = client or SlurmClient(config)
        self.cluster = check_cluster_name(cluster) if cluster else None
        self.parent = check_account_name(parent) if parent else None

    # ----------------------------------------------------------------- plumbing

    async def _sacctmgr(
        self, verb: Verb, args: list[str], what: str, refuse: Mapping[Outcome, str] | None = None
    ) -> tuple[Outcome, CommandResult]:
        """Run one sacctmgr call; its outcome, or the SlurmError its failure is.

        ``refuse`` turns answers that are no failure for sacctmgr ("Nothing modified") into a refusal with
        that message, counted as one.
        """
        with _counted(verb):
            result = await self.client.run("sacctmgr", args)
            answer = sacctmgr.outcome(result.returncode, result.stdout, result.stderr)
            if answer is None:
                raise sacctmgr.failure(what, result.returncode, result.stdout, result.stderr, result.argv)
            if refuse and answer in refuse:
                raise SacctmgrRefusedError(
                    refuse[answer],
                    detail=sacctmgr.sacctmgr_words(result.stdout, result.stderr),
                    command=result.argv,
                    returncode=result.returncode,
                )
            return answer, result

    # ----------------------------------------------------------------- reads

    async def snapshot(self) -> dict[str, AccountState]:
        """Every account with its users and limits, from one ``sacctmgr show assoc`` (cost: module docstring)."""
        _, result = await self._sacctmgr("show", sacctmgr.show_associations_args(self.cluster), "sacctmgr show assoc")
        return sacctmgr.parse_associations(result.stdout)

    async def account(self, name: str) -> AccountState | None:
        """One account with its users and limits, as :meth:`snapshot` has it; None if Slurm has no such account.

        One ``sacctmgr show assoc where account=<name>``: 0.27 s at 10,000 accounts as at none.
        """
        account = check_account_name(name)
        args = sacctmgr.show_associations_args(self.cluster, account)
        _, result = await self._sacctmgr("show", args, f"sacctmgr show assoc of {account}")
        return sacctmgr.parse_associations(result.stdout).get(account)

    async def usage_minutes(self) -> dict[str, int]:
        """Billing-TRES minutes used, per account, from one ``sshare`` (account rows only)."""
        result = await self.client.run("sshare", sacctmgr.usage_args())
        if result.returncode != 0:
            raise sacctmgr.sshare_failure(result.returncode, result.stderr, result.argv)
        return sacctmgr.parse_usage(result.stdout)

    # ----------------------------------------------------------------- changes

    async def ensure_account(self, name: str, *, description: str, organization: str, fairshare: int = 1) -> bool:
        """Create the account if it is absent, unlimited (maxjobs=-1, maxsubmitjobs=-1); True if it was created.

        One call either way: an existing account is sacctmgr's "Nothing new added.". Its limits are then
        :meth:`set_limits`'s business; set them before adding users, so no member ever sees it unlimited.
        """
        account = check_account_name(name)
        args = sacctmgr.create_account_args(
            account,
            description=check_free_text(description, "description"),
            organization=check_free_text(organization, "organization"),
            fairshare=fairshare,
            parent=self.parent,
            cluster=self.cluster,
        )
        answer, _ = await self._sacctmgr("create", args, f"creating Slurm account {account}")
        if answer == "done":
            log.info("Slurm account created", extra={"account": account})
        return answer == "done"

    async def add_users(self, name: str, users: Iterable[str]) -> None:
        """Make ``users`` members of the account (one call); members already there are no error.

        A user Slurm does not know yet is created with this account as default (module docstring).
        """
        account = check_account_name(name)
        members = check_user_names(users)
        if not members:
            return
        args = sacctmgr.add_users_args(account, members, self.cluster)
        await self._sacctmgr("add", args, f"adding {', '.join(members)} to Slurm account {account}")

    async def remove_users(self, name: str, users: Iterable[str]) -> None:
        """Take ``users`` out of the account; users who are not in it are no error.

        One read, then: whoever keeps other accounts and has this one as default gets another default first;
        then one removal for those who keep other accounts and one for those who leave their last (sacctmgr
        refuses the two kinds in one call). Every step is safe to repeat after a crash (module docstring).
        """
        account = check_account_name(name)
        members = check_user_names(users)
        if not members:
            return
        _, listed = await self._sacctmgr(
            "show", sacctmgr.user_accounts_args(members, self.cluster), "reading the users' Slurm accounts"
        )
        known = sacctmgr.parse_user_accounts(listed.stdout)
        last = [user for user in members if user in known and known[user][1] == {account}]
        staying = [user for user in members if user not in last]
        for user in staying:
            default, accounts = known.get(user, ("", set()))
            others = sorted(accounts - {account})
            if default == account and others:
                args = sacctmgr.set_default_account_args(user, others[0], self.cluster)
                await self._sacctmgr("modify", args, f"making {others[0]} the default Slurm account of {user}")
        for group in (staying, last):
            if group:
                args = sacctmgr.remove_users_args(account, group, self.cluster)
                await self._sacctmgr("remove", args, f"removing {', '.join(group)} from Slurm account {account}")

    async def set_limits(self, name: str, *, locked: bool, quota_minutes: int | None, fairshare: int | None) -> None:
        """``maxjobs`` 0 (locked) or -1, ``grptresmins=billing=<quota>`` (None: no limit), ``fairshare`` (None: kept).

        One call, idempotent (sacctmgr rewrites equal values without complaint). An account that does not
        exist is a SacctmgrRefusedError.
        """
        account = check_account_name(name)
        args = sacctmgr.limits_args(
            account, locked=locked, quota_minutes=quota_minutes, fairshare=fairshare, cluster=self.cluster
        )
        what = f"setting the limits of Slurm account {account}"
        await self._sacctmgr("modify", args, what, refuse={"nothing_modified": f"there is no Slurm account {account}"})

    async def delete_account(self, name: str) -> bool:
        """Delete the account and its associations; False if there was none.

        sacctmgr refuses ("Job(s) active, cancel job(s) before remove") while slurmdbd knows of jobs of
        the account that have not ended. UCloud/IM never deletes accounts; this is for tests and admins.
        """
        account = check_account_name(name)
        args = sacctmgr.delete_account_args(account, self.cluster)
        answer, _ = await self._sacctmgr("delete", args, f"deleting Slurm account {account}")
        return answer == "done"
