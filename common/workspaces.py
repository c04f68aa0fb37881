"""A job's workspace and whether its wallet lets it run: one rule for the gateway and the operator.

A UCloud job is charged to its project, or to its owner's personal workspace when it has
none. Its product category's wallet there (Core's, from the accounting event stream, in
the workspace's UCloudProject) decides whether it may start: Core locks a wallet that is
used up, and the provider refuses new work on it with 402 and Core's words (the anchor's
``MakeInsufficientFundsMessage``). A job that may runs under the workspace's Slurm account,
and a project's job keeps its folder in the project's drive.
"""

from __future__ import annotations

from typing import Final

from ucim.common.drives import HOME_DRIVE_ANNOTATION, Locator
from ucim.common.resources import UCloudProject, UserConnection, Wallet, Workspace

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
    """The workspace's Slurm account for a category, or a project's Unix group, does not (yet) hold the user."""


def _known(workspace: UCloudProject | None) -> UCloudProject:
    if workspace is None:
        raise AccountNotReadyError("Core has sent nothing about this workspace yet")
    return workspace


def ready_account(workspace: UCloudProject | None, category: str, local_user: str) -> str:
    """The Slurm account a job of ``local_user`` in ``category`` runs under, once the bridge has made it."""
    account = _known(workspace).account(category)
    if account is None:
        raise AccountNotReadyError(f"the bridge has not made its Slurm account for {category!r} yet")
    if local_user not in account.users:
        raise AccountNotReadyError(f"the bridge has not added {local_user} to Slurm account {account.name} yet")
    return account.name


def ready_drive(workspace: UCloudProject | None, local_user: str) -> str | None:
    """The drive (a locator) a job of ``local_user`` keeps its folder in; None for a personal workspace (the home).

    A project's job uses the project's drive, the folder of its Unix group, once the bridge made the group with
    the user in it (the user's instance makes the job folder there, as the user).
    """
    known = _known(workspace)
    if known.spec.workspace.kind != "project":
        return None
    group = known.status.group
    if group is None:
        raise AccountNotReadyError("the bridge has not made the project's Unix group yet")
    if local_user not in known.status.group_members:
        raise AccountNotReadyError(f"the bridge has not added {local_user} to Unix group {group} yet")
    return str(Locator.project(group))


def ready_drive_id(workspace: UCloudProject | None) -> str:
    """The id Core gave a project's drive, once the operator registered it (a job's outputFolder names it)."""
    drive_id = _known(workspace).status.drive_id
    if drive_id is None:
        raise AccountNotReadyError("the project's drive is not registered with Core yet")
    return drive_id


def home_drive(connection: UserConnection | None) -> str | None:
    """The id of a user's home drive at Core; None before the gateway registered it."""
    if connection is None:
        return None
    return (connection.metadata.annotations or {}).get(HOME_DRIVE_ANNOTATION)
