"""The operator registers a project's drive with Core once the bridge has made its folder, and only once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from pydantic import SecretStr

from tests.support.fake_kube import FakeKube
from ucim.common.core_client import CoreClient
from ucim.common.informer import Informer
from ucim.common.kube import Kube
from ucim.common.protocol import ProductReference
from ucim.common.resources import UCloudProject
from ucim.operator.project_drives import ProjectDrives, needs_drive
from ucim.testing import CoreStandIn

PROVIDER = "ucim"
NAMESPACE = "ucim"
REGISTER = "/api/files/collections/control/register"


@pytest.fixture
async def core() -> AsyncIterator[CoreStandIn]:
    async with CoreStandIn(PROVIDER, "refresh-token") as core:
        await core.start()
        yield core


def workspace(status: dict[str, Any], kind: str = "project") -> UCloudProject:
    return UCloudProject.model_validate(
        {
            "metadata": {"name": "project-p1", "generation": 1},
            "spec": {"workspace": {"kind": kind, "id": "p-1"}, "cluster": "local"},
            "status": status,
        }
    )


FOLDER = {"group": "pp1", "gid": 5000, "driveFolder": "/work/projects/pp1"}


def test_a_drive_is_wanted_once_the_folder_stands_and_until_core_holds_it() -> None:
    assert needs_drive(workspace(FOLDER))
    assert not needs_drive(workspace({"group": "pp1", "gid": 5000}))
    assert not needs_drive(workspace(FOLDER | {"driveId": "7"}))
    assert not needs_drive(workspace(FOLDER, kind="user"))


async def drives_of(core: CoreStandIn, kube: FakeKube, client: CoreClient) -> ProjectDrives:
    projects: Informer[UCloudProject] = Informer(cast(Kube, kube), UCloudProject, NAMESPACE)
    return ProjectDrives(client, cast(Kube, kube), projects, namespace=NAMESPACE, provider_id=PROVIDER, title="Work")


async def test_the_drive_is_registered_as_the_projects_and_its_id_recorded_once(
    core: CoreStandIn, kube: FakeKube
) -> None:
    await kube.create(workspace(FOLDER), NAMESPACE)
    async with CoreClient(core.url, SecretStr("refresh-token")) as client:
        for _ in range(2):  # a restart, or an operator whose status write was lost: Core's 409 gives the same id
            drives = await drives_of(core, kube, client)
            drive_id = await drives.register(workspace(FOLDER))
    (drive,) = core.project_drives("p-1")
    assert drive.id == drive_id and drive.provider_generated_id == "project:pp1"
    assert drive.specification.title == "Work"
    assert drive.specification.product == ProductReference(id="project", category="storage", provider=PROVIDER)
    assert drive.owner.created_by == "_ucloud"
    stored = await kube.get(UCloudProject, NAMESPACE, "project-p1")
    assert stored is not None and stored.status.drive_id == drive_id


async def test_a_core_that_is_down_is_tried_again_until_it_takes_the_drive(core: CoreStandIn, kube: FakeKube) -> None:
    await kube.create(workspace(FOLDER), NAMESPACE)
    core.fail_requests(REGISTER, times=2)
    async with CoreClient(core.url, SecretStr("refresh-token"), attempts=1) as client:
        drives = await drives_of(core, kube, client)
        drives.projects.objects["project-p1"] = workspace(FOLDER)
        drives.on_project("ADDED", workspace(FOLDER))
        worker = asyncio.create_task(drives.run())
        try:
            async with asyncio.timeout(10):
                while not core.project_drives("p-1"):  # noqa: ASYNC110 - the stand-in has no event for it
                    await asyncio.sleep(0.05)
        finally:
            worker.cancel()
    assert core.record.requests[REGISTER] == 3
