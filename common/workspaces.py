"""A job's workspace and whether its wallet lets it run: one rule for the gateway and the operator.

A UCloud job is charged to its project, or to its owner's personal workspace when it has
none. Its product category's wallet there (Core's, from the accounting event stream, in
the workspace's UCloudProject) decides whether it may start: Core locks a wallet that is
used up, and the provider refuses new work on it with 402 and Core's words (the anchor's
``MakeInsufficientFundsMessage``).
"""

from __future__ import annotations

from typing import Final

from ucim.common.resources import UCloudProject, Wallet, Workspace

# The errorCode the anchor gives a job refused for a locked compute wallet.
NOT_ENOUGH_COMPUTE_CREDITS: Final = "NOT_ENOUGH_COMPUTE_CREDITS"


def job_workspace(owner: str, project: str | None) -> Workspace:
    return Workspace(kind="project", id=project) if project else Workspace(kind="user", id=owner)


def insufficient_funds(workspace: UCloudProject | None, category: str) -> str | None:
    """Why the workspace may not start work in ``category`` (Core's words), or None when it may."""
    wallet = workspace.wallet(category) if workspace is not None else None
    if wallet is None:
        # The anchor counts an unknown allocation as locked and then says "reached the quota", which
        # misleads: this says what Core itself says of a workspace without an allocation.
        return f"You do not have any valid allocations for '{category}'"
    return _locked_message(wallet)


def _locked_message(wallet: Wallet) -> str | None:
    if not wallet.locked:
        return None
    if wallet.usage >= wallet.quota:
        return f"This workspace has reached the {wallet.category} quota."
    return (
        f"This workspace cannot create {wallet.category}s due to over allocation. "
        "Please contact your quota administrator."
    )


class AccountNotReadyError(Exception):
    """The workspace's Slurm account for a category does not exist yet, or does not hold the user yet."""


def ready_account(workspace: UCloudProject | None, category: str, local_user: str) -> str:
    """The Slurm account a job of ``local_user`` in ``category`` runs under, once the bridge has made it."""
    if workspace is None:
        raise AccountNotReadyError("Core has sent nothing about this workspace yet")
    account = workspace.account(category)
    if account is None:
        raise AccountNotReadyError(f"the bridge has not made its Slurm account for {category!r} yet")
    if local_user not in account.users:
        raise AccountNotReadyError(f"the bridge has not added {local_user} to Slurm account {account.name} yet")
    return account.name
