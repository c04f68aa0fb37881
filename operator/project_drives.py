"""Registering each project's drive with Core once the bridge has made its folder.

The operator watches the UCloudProjects of its cluster. A project whose folder stands
(``status.driveFolder``, the bridge's) and whose drive Core does not hold yet
(``status.driveId``, the operator's) is registered as the anchor does: product
``project``, created by Core's system user, owned by the project, every member may read
and write it (the folder's Unix group decides what each can really do). Registration is
idempotent at Core (``DriveRegistry``), so a restart, a second replica or a lost answer
registers nothing twice. A Core that is down, or that refuses, is tried again with the
one backoff.
"""

from __future__ import annotations

import asyncio
import logging

from ucim.common.core_client import CoreClient
from ucim.common.drive_registry import SYSTEM_USER, DriveRegistry
from ucim.common.drives import Locator
from ucim.common.events import post_event
from ucim.common.informer import Change, Informer
from ucim.common.kube import Kube, NotFoundError
from ucim.common.products import PROJECT_PRODUCT
from ucim.common.protocol import DriveSpecification, ProviderRegisteredResource
from ucim.common.resources import UCloudProject
from ucim.common.retry import delay_after

log = logging.getLogger(__name__)


def needs_drive(project: UCloudProject) -> bool:
    status = project.status
    return (
        project.spec.workspace.kind == "project" and bool(status.drive_folder and status.group) and not status.drive_id
    )


def drive_item(
    project_id: str, locator: Locator, provider_id: str, title: str
) -> ProviderRegisteredResource[DriveSpecification]:
    """The drive as the anchor registers a project's: Core's system user creates it, the project owns it."""
    return ProviderRegisteredResource[DriveSpecification](
        spec=DriveSpecification(title=title, product=PROJECT_PRODUCT.reference(provider_id)),
        provider_generated_id=str(locator),
        created_by=SYSTEM_USER,
        project=project_id,
        project_all_read=True,
        project_all_write=True,
    )


class ProjectDrives:
    def __init__(
        self,
        core: CoreClient,
        kube: Kube,
        projects: Informer[UCloudProject],
        *,
        namespace: str,
        provider_id: str,
        title: str,
    ) -> None:
        """``projects`` is the operator's informer of its cluster's UCloudProjects; it hands changes to on_project."""
        self.kube, self.projects, self.namespace = kube, projects, namespace
        self.provider_id, self.title = provider_id, title
        self.registry = DriveRegistry(core)
        self._failures: dict[str, int] = {}
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()

    def on_project(self, change: Change, project: UCloudProject) -> None:
        if change != "DELETED" and needs_drive(project):
            self.mark(project.metadata.name)

    def mark(self, name: str) -> None:
        if name not in self._queued:
            self._queued.add(name)
            self._queue.put_nowait(name)

    async def run(self) -> None:
        while True:
            name = await self._queue.get()
            self._queued.discard(name)
            project = self.projects.get(name)
            if project is None or not needs_drive(project):
                continue
            try:
                await self.register(project)
            except Exception as error:
                failures = self._failures[name] = self._failures.get(name, 0) + 1
                delay = delay_after(failures, first=1.0, cap=300.0)
                log.warning("project drive not registered (%s); again in %.0f s", error, delay,
                            extra={"ucloudproject": name})  # fmt: skip
                asyncio.get_running_loop().call_later(delay, self.mark, name)
            else:
                self._failures.pop(name, None)

    async def register(self, project: UCloudProject) -> str:
        """Register the project's drive (or find it at Core) and record its id."""
        locator = Locator.project(project.status.group or "")
        item = drive_item(project.spec.workspace.id, locator, self.provider_id, self.title)
        drive_id = await self.registry.register(locator, item)
        name = project.metadata.name
        try:
            await self.kube.patch_status(UCloudProject, self.namespace, name, {"driveId": drive_id})
        except NotFoundError:
            return drive_id
        log.info("project drive registered", extra={"ucloudproject": name, "drive": drive_id})
        note = f"drive {drive_id} at Core is {locator} ({project.status.drive_folder})"
        await post_event(self.kube, project, reason="DriveRegistered", note=note, controller="ucim.io/operator")
        return drive_id
