"""What Core's accounting events make of a workspace's UCloudProject spec (pure; no I/O).

A project event carries the whole project (title, members); a wallet event one category's
allocation (quota, usage, lock). The spec is Core's state as the stream last said it: a
replayed event that changes nothing yields no patch, which is what makes replays harmless.
"""

from __future__ import annotations

from typing import Any

from ucim.common.accounting_stream import ProjectUpdated, WalletUpdated
from ucim.common.resources import (
    ProjectMember,
    UCloudProject,
    UCloudProjectSpec,
    Wallet,
    Workspace,
    cluster_labels,
)

# The role of a personal workspace's one member: its owner decides everything, like a PI.
OWNER_ROLE = "PI"


def project_workspace(event: ProjectUpdated) -> Workspace:
    return Workspace(kind="project", id=event.project.id)


def wallet_workspace(event: WalletUpdated) -> Workspace:
    return Workspace(kind=event.owner.kind, id=event.owner.id)


def new_project(workspace: Workspace, cluster: str) -> UCloudProject:
    """An empty UCloudProject of ``workspace``: a personal one has its user as only member."""
    members = [ProjectMember(username=workspace.id, role=OWNER_ROLE)] if workspace.kind == "user" else []
    title = workspace.id if workspace.kind == "user" else None
    return UCloudProject.model_validate(
        {
            "metadata": {"name": UCloudProject.name_for(workspace), "labels": cluster_labels(cluster)},
            "spec": UCloudProjectSpec(workspace=workspace, cluster=cluster, title=title, members=members),
        }
    )


def with_project(spec: UCloudProjectSpec, event: ProjectUpdated) -> UCloudProjectSpec:
    """``spec`` with the project's title, members and whether it may consume resources."""
    project = event.project
    return spec.model_copy(
        update={
            "title": project.specification.title,
            "members": [ProjectMember(username=m.username, role=m.role) for m in project.status.members],
            "can_consume_resources": project.specification.can_consume_resources,
            "modified_at": event.modified_at_ms,
        }
    )


def with_wallet(spec: UCloudProjectSpec, event: WalletUpdated) -> UCloudProjectSpec:
    """``spec`` with the wallet of the event's category set; the other wallets kept, in order."""
    category = event.category
    wallet = Wallet(
        category=category.name,
        product_type=category.product_type or None,
        # Core omits an empty frequency; its default is ONCE.
        frequency=category.accounting_frequency or "ONCE",
        quota=max(0, event.quota),
        usage=max(0, event.usage),
        locked=event.locked,
        free_to_use=category.free_to_use,
        updated_at=event.last_update_ms,
    )
    wallets = [w for w in spec.wallets if w.category != wallet.category]
    at = next((i for i, w in enumerate(spec.wallets) if w.category == wallet.category), len(wallets))
    wallets.insert(at, wallet)
    return spec.model_copy(update={"wallets": wallets})


def spec_patch(old: UCloudProjectSpec, new: UCloudProjectSpec) -> dict[str, Any] | None:
    """The merge patch from ``old`` to ``new`` (whole lists: the operator is the spec's one writer); None if equal."""
    before, after = old.to_dict(), new.to_dict()
    changed = {key: value for key, value in after.items() if before.get(key) != value}
    return {"spec": changed} if changed else None
