"""A project's folder on the frontend: the local side of its UCloud drive, made by the bridge as root.

The folder is the site's project pattern (the instances' ``drive_roots["project"]``, e.g.
``/work/projects/{name}``) with the project's Unix group as ``{name}``. It is created
``root:<group>`` with mode ``2770``, as the anchor recommends: the group's members read and
write it (the setgid bit gives what they create the group), nobody else gets in, and no
member can take it away from the others. The OS enforces it; the instances only serve it.

An existing folder is left as the site made it (its mode and content are the site's), but
it must be a real directory: a symbolic link there is refused, as the instances refuse links.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ucim.common.drives import Locator

log = logging.getLogger(__name__)

FOLDER_MODE: Final = 0o2770


class ProjectFolderError(Exception):
    """The folder cannot be made or is not a folder; the message says why."""


@dataclass(frozen=True)
class ProjectFolders:
    # An absolute pattern with one field, {name}: the group (checked by the bridge's settings).
    pattern: str

    def path(self, group: str) -> Path:
        # Locator checks the name (a plain local name: no "/", never ".."), so formatting cannot leave the pattern.
        return Path(self.pattern.format(name=Locator.project(group).name))

    async def ensure(self, group: str, gid: int) -> Path:
        """The group's folder, created ``root:<gid>`` 2770 if it is not there; raises ProjectFolderError."""
        return await asyncio.to_thread(self._ensure, group, gid)

    def _ensure(self, group: str, gid: int) -> Path:
        path = self.path(group)
        try:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            try:
                path.mkdir(mode=0o700)  # closed until it has its group and mode
            except FileExistsError:
                found = path.lstat()
                if not stat.S_ISDIR(found.st_mode):
                    raise ProjectFolderError(f"{path} exists and is not a folder") from None
                return path
            os.chown(path, 0, gid)
            path.chmod(FOLDER_MODE)  # after chown: chown clears the setgid bit
        except OSError as error:
            raise ProjectFolderError(f"{path}: {error.strerror or error}") from error
        log.info("project folder created", extra={"group": group, "path": str(path)})
        return path
