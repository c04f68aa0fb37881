"""File parameters of a job: the local drive behind each UCloud path ``/<drive id>/<path in the drive>``.

A job names its input files and folders by UCloud path. The drive id means nothing locally: like the
anchor (IM2 slurm drives.go), the gateway asks Core for the drive and reads the locator ucim registered
it with (``home:<user>``, ``project:<group>``; ucim.common.drives). A drive's locator never changes, so
each id is asked for once per process. The UCloudJob keeps the path and the locator; the user's instance
finds the folder from them and checks, as the user, that the file is there and readable: the gateway
never touches the file system.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable
from typing import Final

from ucim.common.core_client import CoreClient, CoreError, CoreRejectedError
from ucim.common.drives import InvalidLocatorError, Locator
from ucim.common.protocol import Job
from ucim.gateway.errors import ProviderError

# Drive ids kept; each is a few dozen bytes.
CACHE_SIZE: Final = 10_000


def drive_id_of(path: str) -> str:
    """The drive id of a UCloud path, ``/<drive id>/…``; ProviderError(400) for anything else."""
    parts = path.split("/", 2)
    if len(parts) < 2 or parts[0] != "" or not parts[1].isdigit():
        raise ProviderError(400, f"{path[:200]!r} is not a UCloud path (/<drive id>/<path>)")
    return parts[1]


def file_drive_ids(jobs: Iterable[Job]) -> set[str]:
    """The drives the jobs' file parameters name."""
    return {
        drive_id_of(value.path)
        for job in jobs
        for value in (job.specification.parameters or {}).values()
        if value.type == "file"
    }


class DriveLocators:
    """Drive id → the locator ucim registered it with, asked of Core once per id."""

    def __init__(self, core: CoreClient) -> None:
        self.core = core
        self._known: OrderedDict[str, str] = OrderedDict()

    async def locators(self, drive_ids: set[str]) -> dict[str, str]:
        """The locator of each drive; ProviderError(400) for a drive that is not one of this provider's."""
        missing = sorted(drive_ids - self._known.keys())
        found = await asyncio.gather(*(self._ask_core(drive_id) for drive_id in missing))
        for drive_id, locator in zip(missing, found, strict=True):
            self._known[drive_id] = locator
        answer = {}
        for drive_id in drive_ids:
            self._known.move_to_end(drive_id)
            answer[drive_id] = self._known[drive_id]
        while len(self._known) > CACHE_SIZE:
            self._known.popitem(last=False)
        return answer

    async def _ask_core(self, drive_id: str) -> str:
        try:
            drive = await self.core.retrieve_drive(drive_id)
        except CoreRejectedError as error:
            raise ProviderError(400, f"drive {drive_id} of a file parameter is unknown to UCloud/Core") from error
        except CoreError as error:
            raise ProviderError(503, f"UCloud/Core did not say where drive {drive_id} is: {error}") from error
        try:
            return str(Locator.parse(drive.provider_generated_id))
        except InvalidLocatorError as error:
            raise ProviderError(400, f"drive {drive_id} of a file parameter is not a drive of this provider") from error
