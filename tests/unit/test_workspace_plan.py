"""What a workspace's spec asks of the frontend, and a job's wallet check (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from ucim.common.resources import UCloudProject, UCloudProjectStatus
from ucim.common.workspaces import (
    AccountNotReadyError,
    insufficient_funds,
    job_workspace,
    ready_account,
    ready_drive,
)
from ucim.slurm_bridge.workspace_plan import (
    applied_changes,
    compute_wallets,
    local_members,
    measured_usage,
    projects_of,
    quota_minutes,
    storage_wallets,
    usage_in_unit,
    wanted_account,
)


def project(**spec: Any) -> UCloudProject:
    return UCloudProject.model_validate(
        {
            "metadata": {"name": "project-p1"},
            "spec": {"workspace": {"kind": "project", "id": "p1"}, "cluster": "local", **spec},
        }
    )


def wallet(category: str = "cpu", **fields: Any) -> dict[str, Any]:
    return {
        "category": category,
        "productType": "COMPUTE",
        "frequency": "PERIODIC_HOUR",
        "quota": 10,
        "usage": 0,
        "locked": False,
        "updatedAt": 1,
        **fields,
    }


MEMBERS = [{"username": "alice#1", "role": "PI"}, {"username": "bob#2", "role": "USER"}]


def test_only_connected_members_are_local_members() -> None:
    p = project(members=MEMBERS)
    assert local_members(p, {"alice#1": "alice"}) == {"alice"}
    assert local_members(p, {"alice#1": "alice", "bob#2": "bob", "carol#3": "carol"}) == {"alice", "bob"}


def test_storage_wallets_need_no_slurm_account() -> None:
    p = project(wallets=[wallet(), wallet("storage", productType="STORAGE", frequency="ONCE")])
    assert [w.category for w in compute_wallets(p)] == ["cpu"]


def test_storage_is_measured_in_whole_gb_and_only_where_it_is_accounted() -> None:
    accounted = project(wallets=[wallet("storage", productType="STORAGE", frequency="ONCE")])
    assert [(u.category, u.usage) for u in measured_usage(accounted, {}, {}, 2 * 10**9 - 1)] == [("storage", 1)]
    assert measured_usage(accounted, {}, {}, None) == []  # not measured yet: nothing said
    free = project(wallets=[wallet("storage", productType="STORAGE", frequency="ONCE", freeToUse=True)])
    assert storage_wallets(free) == [] and measured_usage(free, {}, {}, 10**12) == []


@pytest.mark.parametrize(
    ("frequency", "minutes"), [("PERIODIC_MINUTE", 10), ("PERIODIC_HOUR", 600), ("PERIODIC_DAY", 14_400)]
)
def test_a_quota_in_core_units_is_slurm_minutes(frequency: str, minutes: int) -> None:
    (w,) = project(wallets=[wallet(frequency=frequency)]).spec.wallets
    assert quota_minutes(w) == minutes


def test_fairshare_is_the_quota_in_days_and_never_zero() -> None:
    (w,) = project(wallets=[wallet(quota=48)]).spec.wallets
    assert wanted_account(w, frozenset({"alice"})).fairshare == 2
    (small,) = project(wallets=[wallet(quota=1)]).spec.wallets
    assert wanted_account(small, frozenset()).fairshare == 1


def test_usage_is_rounded_down_to_the_unit() -> None:
    (w,) = project(wallets=[wallet()]).spec.wallets
    assert usage_in_unit(w, 119) == 1  # 119 core-minutes: one whole core-hour
    assert usage_in_unit(w, 120) == 2


def test_measured_usage_maps_accounts_back_to_wallets() -> None:
    p = project(wallets=[wallet(), wallet("gpu")])
    usage = measured_usage(p, {"cpu": "p1_cpu", "gpu": "p1_gpu"}, {"p1_cpu": 600, "other": 5})
    assert [(u.category, u.usage) for u in usage] == [("cpu", 10)]


def test_projects_of_a_user() -> None:
    assert projects_of([project(members=MEMBERS)], "bob#2") == ["project-p1"]
    assert projects_of([project(members=MEMBERS)], "carol#3") == []


def test_a_job_is_charged_to_its_project_or_its_owner() -> None:
    assert job_workspace("alice#1", "p1").kind == "project"
    assert job_workspace("alice#1", None).model_dump() == {"kind": "user", "id": "alice#1"}


def test_a_locked_or_missing_wallet_refuses_work_in_cores_words() -> None:
    assert insufficient_funds(None, "cpu") == "You do not have any valid allocations for 'cpu'"
    assert insufficient_funds(project(wallets=[wallet()]), "cpu") is None
    used_up = project(wallets=[wallet(locked=True, usage=10)])
    assert insufficient_funds(used_up, "cpu") == "This workspace has reached the cpu quota."
    over_allocated = project(wallets=[wallet(locked=True, usage=3)])
    assert "due to over allocation" in (insufficient_funds(over_allocated, "cpu") or "")


def test_a_job_waits_for_its_account_to_hold_its_owner() -> None:
    p = project(wallets=[wallet()])
    with pytest.raises(AccountNotReadyError, match="not made its Slurm account"):
        ready_account(p, "cpu", "alice")
    p.status.accounts = [p.status.model_validate({"accounts": [{"category": "cpu", "name": "p1_cpu"}]}).accounts[0]]
    with pytest.raises(AccountNotReadyError, match="not added alice"):
        ready_account(p, "cpu", "alice")
    p.status.accounts[0].users = ["alice"]
    assert ready_account(p, "cpu", "alice") == "p1_cpu"


def test_what_a_pass_changed_is_told_once_per_change() -> None:
    before = UCloudProjectStatus()
    made = UCloudProjectStatus.model_validate({
        "group": "pp1", "gid": 5000, "groupMembers": ["alice", "bob"], "driveFolder": "/work/projects/pp1",
        "accounts": [{"category": "cpu", "name": "pp1_cpu", "users": ["alice", "bob"], "quotaMinutes": 600}],
    })  # fmt: skip
    assert [reason for reason, _ in applied_changes(before, made)] == [
        "GroupCreated", "GroupMembersChanged", "FolderReady", "AccountReady", "AccountUsersChanged", "AccountQuotaSet"
    ]  # fmt: skip
    assert applied_changes(made, made) == []
    locked = made.model_copy(deep=True)
    locked.group_members = ["alice"]
    locked.accounts[0].users, locked.accounts[0].locked = ["alice"], True
    assert applied_changes(made, locked) == [
        ("GroupMembersChanged", "pp1: removed bob"),
        ("AccountUsersChanged", "pp1_cpu: removed bob"),
        ("AccountLocked", "pp1_cpu: MaxJobs=0, Core locked the wallet"),
    ]


def test_a_project_job_waits_for_its_group_to_hold_its_owner_and_keeps_its_folder_in_the_projects_drive() -> None:
    p = project()
    with pytest.raises(AccountNotReadyError, match="not made the project's Unix group"):
        ready_drive(p, "alice")
    p.status.group = "pp1"
    with pytest.raises(AccountNotReadyError, match="not added alice to Unix group pp1"):
        ready_drive(p, "alice")
    p.status.group_members = ["alice"]
    assert ready_drive(p, "alice") == "project:pp1"
    with pytest.raises(AccountNotReadyError, match="sent nothing"):
        ready_drive(None, "alice")


def test_a_personal_jobs_folder_is_in_the_home() -> None:
    personal = UCloudProject.model_validate(
        {"metadata": {"name": "user-alice"}, "spec": {"workspace": {"kind": "user", "id": "alice#1"}, "cluster": "c"}}
    )
    assert ready_drive(personal, "alice") is None
