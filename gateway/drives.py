"""Registering the drives ucim offers with UCloud/Core: each user's home, and the configured project folders.

A drive is registered once (``/api/files/collections/control/register``) with its
locator as ``providerGeneratedId`` (``ucim.common.drives``). Core refuses a second drive
with the same providerGeneratedId (409), so Core itself is the record of what exists:
a 409, or a drive found by ``control/browse``, means "already registered" and yields
the existing id. That holds with any number of gateway replicas and across restarts.

* **Home drives** are registered when a user connects (``integration/connect``, and
  the auto-connect of ``integration/init``), as soon as the user's local account is
  known. The drive's id is kept in the UserConnection's ``ucim.io/home-drive-id``
  annotation, so that later inits cost no call to Core.
* **Project drives** come from the ``project_drives`` setting (Core project id, local
  group, title): the project <-> group table. They are registered in the background at
  start-up; Core being down or the storage products not yet registered only delays it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from ucim.common.core_client import CoreClient, CoreError, CoreRejectedError
from ucim.common.drives import Locator
from ucim.common.kube import Kube
from ucim.common.products import HOME_PRODUCT, PROJECT_PRODUCT
from ucim.common.protocol import DriveSpecification, ProviderRegisteredResource
from ucim.common.resources import UserConnection
from ucim.common.retry import retrying
from ucim.gateway.settings import ProjectDrive

log = logging.getLogger(__name__)

HOME_DRIVE_ANNOTATION: Final = "ucim.io/home-drive-id"
HOME_TITLE: Final = "Home"
# Core's owner of resources registered for a project rather than a user.
SYSTEM_USER: Final = "_ucloud"
CONFLICT: Final = 409

Sleep = Callable[[float], Awaitable[None]]


@dataclass
class Drives:
    core: CoreClient
    kube: Kube
    namespace: str
    provider_id: str
    # One registration per drive at a time in this process; Core's 409 covers other replicas.
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    async def register(self, locator: Locator, item: ProviderRegisteredResource[DriveSpecification]) -> str:
        """The drive's id at Core: registered now, or found when Core already has it."""
        async with self._locks.setdefault(str(locator), asyncio.Lock()):
            try:
                return (await self.core.register_drives([item]))[0]
            except CoreRejectedError as rejection:
                if rejection.status != CONFLICT:
                    raise
            found = await self.core.browse_drives([str(locator)])
            if not found:
                raise CoreRejectedError(CONFLICT, f"Core holds a drive {locator} but does not list it")
            return found[0].id

    async def ensure_home(self, connection: UserConnection) -> str | None:
        """The id of the user's home drive, registered if it is not yet; None until the user is mapped."""
        annotations = connection.metadata.annotations or {}
        if HOME_DRIVE_ANNOTATION in annotations:
            return annotations[HOME_DRIVE_ANNOTATION]
        local_user = connection.spec.local_user
        if local_user is None:
            return None
        username = connection.spec.ucloud_username
        locator = Locator.home(local_user)
        item = ProviderRegisteredResource[DriveSpecification](
            spec=DriveSpecification(title=HOME_TITLE, product=HOME_PRODUCT.reference(self.provider_id)),
            provider_generated_id=str(locator),
            created_by=username,
        )
        drive_id = await self.register(locator, item)
        patch = {"metadata": {"annotations": {HOME_DRIVE_ANNOTATION: drive_id}}}
        await self.kube.patch(UserConnection, self.namespace, connection.metadata.name, patch)
        log.info("home drive registered", extra={"ucloud_user": username, "drive": drive_id, "locator": str(locator)})
        return drive_id

    async def ensure_projects(self, drives: Sequence[ProjectDrive]) -> dict[str, str]:
        """Register the project drives Core does not hold yet; every drive's id by its locator."""
        locators = {str(Locator.project(drive.group)): drive for drive in drives}
        ids = {found.provider_generated_id: found.id for found in await self.core.browse_drives(list(locators))}
        for locator, drive in locators.items():
            if locator in ids:
                continue
            item = ProviderRegisteredResource[DriveSpecification](
                spec=DriveSpecification(
                    title=drive.title or drive.group, product=PROJECT_PRODUCT.reference(self.provider_id)
                ),
                provider_generated_id=locator,
                created_by=SYSTEM_USER,
                project=drive.project,
                # Every member may use it in UCloud; the folder's UNIX group decides what they can do.
                project_all_read=True,
                project_all_write=True,
            )
            ids[locator] = await self.register(Locator.project(drive.group), item)
            log.info("project drive registered", extra={"project": drive.project, "drive": ids[locator]})
        return ids


async def register_project_drives(
    drives: Drives,
    wanted: Sequence[ProjectDrive],
    *,
    max_wait: float = 60.0,
    sleep: Sleep = asyncio.sleep,
) -> dict[str, str]:
    """Keep trying until every project drive is registered (Core may be down, or lack the products yet)."""
    async for attempt in retrying(
        first=1.0,
        cap=max_wait,
        log=log,
        what="registering the project drives",
        retry_on=lambda error: isinstance(error, CoreError),
        sleep=sleep,
    ):
        with attempt:
            return await drives.ensure_projects(wanted)
    raise AssertionError("unreachable: the retries never stop")  # pragma: no cover
