"""What the frontend should hold for a workspace (pure; no I/O).

From a UCloudProject's spec (Core's members and wallets) and the connections (UCloud user
→ local user), this says which local users the project's group holds, which Slurm
account each compute wallet maps to and with which users and limits, and what Slurm's
billing minutes are in a wallet's unit. The reconciler diffs this against the system.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ucim.common.products import STORAGE_UNIT_BYTES
from ucim.common.resources import (
    MINUTES_PER_PERIOD,
    SlurmAccount,
    UCloudProject,
    UCloudProjectStatus,
    Wallet,
    WalletUsage,
)

COMPUTE = "COMPUTE"
STORAGE = "STORAGE"


@dataclass(frozen=True)
class WantedAccount:
    """One Slurm account as a compute wallet wants it."""

    category: str
    users: frozenset[str]
    locked: bool
    # GrpTRESMins billing: the quota in billing (core) minutes; Slurm refuses jobs that would pass it.
    quota_minutes: int
    # Fairshare as the anchor sets it: the quota in days, at least 1 (0 would mean "no share" to Slurm).
    fairshare: int


def local_members(project: UCloudProject, local_users: Mapping[str, str]) -> frozenset[str]:
    """The local users of the members that are connected (``local_users``: UCloud username → local user)."""
    return frozenset(local_users[m.username] for m in project.spec.members if m.username in local_users)


def compute_wallets(project: UCloudProject) -> list[Wallet]:
    """The wallets that need a Slurm account: compute categories (others have no Slurm side)."""
    return [w for w in project.spec.wallets if (w.product_type or COMPUTE) == COMPUTE]


def storage_wallets(project: UCloudProject) -> list[Wallet]:
    """The wallets of ucim's storage category that are accounted (Core grants a free one too: nothing to measure)."""
    return [w for w in project.spec.wallets if w.product_type == STORAGE and not w.free_to_use]


def quota_minutes(wallet: Wallet) -> int:
    """The wallet's quota in Slurm's minutes: Core counts the category's unit x its period."""
    return wallet.quota * MINUTES_PER_PERIOD[wallet.frequency]


def wanted_account(wallet: Wallet, members: frozenset[str]) -> WantedAccount:
    minutes = quota_minutes(wallet)
    return WantedAccount(
        category=wallet.category,
        users=members,
        locked=wallet.locked,
        quota_minutes=minutes,
        fairshare=max(1, minutes // 1440),
    )


def usage_in_unit(wallet: Wallet, billing_minutes: int) -> int:
    """Slurm's billing minutes in the wallet's unit x period, rounded down (never charge a part not used).

    The anchor reports minutes whatever the period, 60x too much for an hourly category
    (PROTOCOL-ACCOUNTING.md §5.2); this divides, as its Kubernetes flavour does.
    """
    return billing_minutes // MINUTES_PER_PERIOD[wallet.frequency]


def measured_usage(
    project: UCloudProject,
    accounts: Mapping[str, str],
    minutes_by_account: Mapping[str, int],
    storage_bytes: int | None = None,
) -> list[WalletUsage]:
    """Usage per wallet: compute from Slurm's minutes per account (``accounts``: category → account name),
    storage from the bytes the workspace's drive holds (in GB, rounded down: a part not used is not charged)."""
    usage: list[WalletUsage] = []
    for wallet in compute_wallets(project):
        account = accounts.get(wallet.category)
        if account is not None and account in minutes_by_account:
            usage.append(
                WalletUsage(category=wallet.category, usage=usage_in_unit(wallet, minutes_by_account[account]))
            )
    if storage_bytes is not None:
        usage += [
            WalletUsage(category=w.category, usage=storage_bytes // STORAGE_UNIT_BYTES)
            for w in storage_wallets(project)
        ]
    return usage


def projects_of(projects: Iterable[UCloudProject], ucloud_username: str) -> list[str]:
    """The names of the workspaces ``ucloud_username`` is a member of."""
    return [p.metadata.name for p in projects if any(m.username == ucloud_username for m in p.spec.members)]


def applied_changes(before: UCloudProjectStatus, after: UCloudProjectStatus) -> list[tuple[str, str]]:
    """What a pass changed on the frontend, as (reason, note) of the Events that tell it."""
    changes: list[tuple[str, str]] = []
    if after.group and not before.group:
        changes.append(("GroupCreated", f"Unix group {after.group} ({after.gid})"))
    joined = sorted(set(after.group_members) - set(before.group_members))
    left = sorted(set(before.group_members) - set(after.group_members))
    if after.group and (joined or left):
        changes.append(("GroupMembersChanged", f"{after.group}: {_added_removed(joined, left)}"))
    if after.drive_folder and not before.drive_folder:
        changes.append(("FolderReady", f"{after.drive_folder} is the project's folder"))
    old = {a.category: a for a in before.accounts}
    for account in after.accounts:
        was = old.get(account.category)
        if was is None or was.name != account.name:
            changes.append(("AccountReady", f"Slurm account {account.name} for {account.category}"))
            was = SlurmAccount(category=account.category, name=account.name)
        joined = sorted(set(account.users) - set(was.users))
        left = sorted(set(was.users) - set(account.users))
        if joined or left:
            changes.append(("AccountUsersChanged", f"{account.name}: {_added_removed(joined, left)}"))
        if account.locked != was.locked:
            changes.append(
                (
                    "AccountLocked" if account.locked else "AccountUnlocked",
                    f"{account.name}: MaxJobs="
                    + ("0, Core locked the wallet" if account.locked else "-1, Core unlocked the wallet"),
                )
            )
        if account.quota_minutes != was.quota_minutes:
            changes.append(("AccountQuotaSet", f"{account.name}: GrpTRESMins=billing={account.quota_minutes}"))
    return changes


def _added_removed(added: list[str], removed: list[str]) -> str:
    said = [f"added {', '.join(added)}"] if added else []
    return "; ".join(said + ([f"removed {', '.join(removed)}"] if removed else []))
