"""A job's input files and folders, found and checked as the user before the job is submitted.

A file parameter names a UCloud path ``/<drive id>/…`` and the drive's locator (the gateway asked Core
for it). The instance roots the drive as file calls do (``paths``: the site's patterns, never another
user's home, no symbolic link followed) and opens the file as its user: the OS says whether the user
may read it, so alice cannot hand bob's file to a job. The script gets the local path; a file that is
missing, unreadable, or of the wrong kind (a folder for an ``input_file``) refuses the job with a reason.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from ucim.common.app_templates import InvalidJobError
from ucim.common.protocol import Drive
from ucim.common.resources import JobApplication, ParameterValue
from ucim.user_sidecar.paths import DriveResolver, PathRefusedError, parse_id, refusal

FOLDER_KINDS: Final = frozenset({"input_directory"})
_READ_FILE: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_READ_FOLDER: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def local_inputs(app: JobApplication, given: Mapping[str, ParameterValue], resolver: DriveResolver) -> dict[str, Path]:
    """The local path of each file parameter; InvalidJobError says which one cannot be used, and why."""
    kinds = {parameter.name: parameter.type for parameter in app.parameters}
    found: dict[str, Path] = {}
    for name, value in given.items():
        if value.type != "file" or name not in kinds:
            continue  # an undeclared value is dropped when the script is made
        try:
            found[name] = _checked(value, folder=kinds[name] in FOLDER_KINDS, resolver=resolver)
        except PathRefusedError as error:
            raise InvalidJobError(f"parameter {name!r}: {error}") from error
    return found


def _checked(value: ParameterValue, *, folder: bool, resolver: DriveResolver) -> Path:
    path = value.path or ""
    file_id = parse_id(path)
    drives = resolver.resolve(Drive(id=file_id.drive, provider_generated_id=value.drive or ""))
    with drives.open_parent(file_id) as (parent, name):
        try:
            fd = os.open(name, _READ_FOLDER if folder else _READ_FILE, dir_fd=parent)
        except NotADirectoryError as error:
            raise PathRefusedError(f"{path} is not a folder") from error
        except OSError as error:
            raise refusal(error, path) from error
        try:
            mode = os.fstat(fd).st_mode
        finally:
            os.close(fd)
    if not folder and not stat.S_ISREG(mode):
        raise PathRefusedError(f"{path} is not a file")
    return drives.roots[file_id.drive].joinpath(*file_id.parts)
