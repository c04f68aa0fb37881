"""What Core's accounting events make of a UCloudProject's spec: Core's state, so a replay patches nothing."""

from __future__ import annotations

from ucim.common.accounting_stream import ProjectUpdated, WalletUpdated, Workspace
from ucim.common.protocol import AccountingUnit, ProductCategory, Project
from ucim.common.resources import Workspace as WorkspaceRef
from ucim.operator.workspaces import new_project, project_workspace, spec_patch, with_project, with_wallet

CPU = ProductCategory(
    name="cpu",
    provider="ucim",
    product_type="COMPUTE",
    accounting_unit=AccountingUnit(name="Core", name_plural="Cores"),
    accounting_frequency="PERIODIC_HOUR",
)
PROJECT = Project.model_validate(
    {
        "id": "94056ba8-0000",
        "specification": {"title": "Folding; rm -rf /", "canConsumeResources": True},
        "status": {"members": [{"username": "alice#1", "role": "PI"}, {"username": "bob#2", "role": "USER"}]},
    }
)


def wallet(quota: int, *, locked: bool = False, category: ProductCategory = CPU) -> WalletUpdated:
    return WalletUpdated(Workspace.project(PROJECT.id), category, quota, 3, locked, 1_700_000_000_000, 0)


def test_a_project_event_sets_title_members_and_time() -> None:
    event = ProjectUpdated(PROJECT, 1_700_000_000_000)
    made = new_project(project_workspace(event), "local")
    spec = with_project(made.spec, event)
    assert (spec.title, [(m.username, m.role) for m in spec.members]) == (
        "Folding; rm -rf /",
        [("alice#1", "PI"), ("bob#2", "USER")],
    )
    assert made.metadata.labels == {"ucim.io/cluster": "local"}
    # The same event again changes nothing: no patch.
    assert spec_patch(spec, with_project(spec, event)) is None


def test_a_wallet_event_sets_its_category_and_keeps_the_others_in_order() -> None:
    spec = new_project(project_workspace(ProjectUpdated(PROJECT, 1)), "local").spec
    gpu = CPU.model_copy(update={"name": "gpu"})
    spec = with_wallet(with_wallet(spec, wallet(10)), wallet(4, category=gpu))
    locked = with_wallet(spec, wallet(10, locked=True))
    assert [(w.category, w.quota, w.locked, w.frequency) for w in locked.wallets] == [
        ("cpu", 10, True, "PERIODIC_HOUR"), ("gpu", 4, False, "PERIODIC_HOUR")
    ]  # fmt: skip
    assert spec_patch(spec, locked) == {"spec": {"wallets": [w.to_dict() for w in locked.wallets]}}
    assert spec_patch(locked, with_wallet(locked, wallet(10, locked=True))) is None


def test_a_personal_workspace_has_its_user_as_member() -> None:
    made = new_project(WorkspaceRef(kind="user", id="alice#1"), "local")
    assert [(m.username, m.role) for m in made.spec.members] == [("alice#1", "PI")]
    assert made.spec.workspace.kind == "user"


def test_a_free_categorys_wallet_says_so_so_nothing_is_measured_for_it() -> None:
    storage = CPU.model_copy(update={"name": "storage", "product_type": "STORAGE", "free_to_use": True})
    spec = with_wallet(
        new_project(project_workspace(ProjectUpdated(PROJECT, 1)), "local").spec, wallet(100, category=storage)
    )
    assert [(w.category, w.free_to_use) for w in spec.wallets] == [("storage", True)]
