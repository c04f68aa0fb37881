"""Registering a drive with UCloud/Core once, whoever asks and however often.

A drive is registered (``/api/files/collections/control/register``) with its locator as
``providerGeneratedId`` (``ucim.common.drives``). Core refuses a second drive with the same
providerGeneratedId (409), so Core itself is the record of what exists: a 409, or a drive
found by ``control/browse``, means "already registered" and yields the existing id. That
holds with any number of replicas and across restarts. The gateway registers homes, the
operator project drives; both go through this.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Final

from ucim.common.core_client import CoreClient, CoreRejectedError
from ucim.common.drives import Locator
from ucim.common.protocol import DriveSpecification, ProviderRegisteredResource

CONFLICT: Final = 409
# Core's owner of resources registered for a project rather than a user.
SYSTEM_USER: Final = "_ucloud"


@dataclass
class DriveRegistry:
    core: CoreClient
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
