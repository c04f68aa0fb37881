"""Registering each user's home drive with UCloud/Core when the user connects.

Homes are registered when a user connects (``integration/connect``, and the auto-connect
of ``integration/init``), as soon as the user's local account is known, through the one
``DriveRegistry`` (Core's 409 makes it idempotent). The drive's id is kept in the
UserConnection's ``ucim.io/home-drive-id`` annotation, so that later inits cost no call to
Core. Project drives are the operator's: they come from Core's projects (UCloudProject).
The other way round, a job's file parameter names a drive by id: ``DriveLocators`` asks Core.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Final

from ucim.common.core_client import CoreClient
from ucim.common.drive_registry import DriveRegistry
from ucim.common.drives import HOME_DRIVE_ANNOTATION, Locator
from ucim.common.kube import Kube
from ucim.common.products import HOME_PRODUCT
from ucim.common.protocol import DriveSpecification, ProviderRegisteredResource
from ucim.common.resources import UserConnection
from ucim.common.workspaces import home_drive
from ucim.gateway.file_parameters import DriveLocators

log = logging.getLogger(__name__)

HOME_TITLE: Final = "Home"


@dataclass
class Drives:
    core: CoreClient
    kube: Kube
    namespace: str
    provider_id: str
    registry: DriveRegistry = field(init=False)
    # Where the drives of jobs' file parameters are.
    locators: DriveLocators = field(init=False)

    def __post_init__(self) -> None:
        self.registry = DriveRegistry(self.core)
        self.locators = DriveLocators(self.core)

    async def ensure_home(self, connection: UserConnection) -> str | None:
        """The id of the user's home drive, registered if it is not yet; None until the user is mapped."""
        known = home_drive(connection)
        if known is not None:
            return known
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
        drive_id = await self.registry.register(locator, item)
        patch = {"metadata": {"annotations": {HOME_DRIVE_ANNOTATION: drive_id}}}
        await self.kube.patch(UserConnection, self.namespace, connection.metadata.name, patch)
        log.info("home drive registered", extra={"ucloud_user": username, "drive": drive_id, "locator": str(locator)})
        return drive_id
