"""Drive locators: how a UCloud drive names the local folder it stands for.

ucim registers every drive it offers with Core, and the drive's ``providerGeneratedId``
is its *locator*, ``<kind>:<name>``:

* ``home:<local user>``: that user's home directory;
* ``project:<local group>``: the project folder of that group (a site pattern such as
  ``/work/projects/{name}``).

Core sends the drive back with every file call (``resolvedCollection``), so the user's
instance learns from the request which local root a drive id stands for, and no table
of drive ids is kept anywhere. The instance still refuses a home that is not its own
user's; the OS refuses the rest (a project folder is readable by its group only).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Final, Literal

DriveKind = Literal["home", "project"]
KINDS: Final[tuple[DriveKind, ...]] = ("home", "project")
# A POSIX-portable account or group name (useradd's default rule, plus upper case).
LOCAL_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")


# The id Core gave a user's home drive, on their UserConnection (the gateway registers the drive at init).
HOME_DRIVE_ANNOTATION: Final = "ucim.io/home-drive-id"


class InvalidLocatorError(ValueError):
    """A providerGeneratedId that is not a ucim drive locator; the message says why."""


@dataclass(frozen=True)
class Locator:
    kind: DriveKind
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"

    @classmethod
    def parse(cls, text: str | None) -> Locator:
        if not text:
            raise InvalidLocatorError("the drive has no providerGeneratedId: it was not registered by this provider")
        kind, sep, name = text.partition(":")
        if not sep or kind not in KINDS:
            expected = "home:<user> or project:<group>"
            raise InvalidLocatorError(f"{text[:100]!r} is not a drive of this provider (expected {expected})")
        if not LOCAL_NAME.fullmatch(name):
            raise InvalidLocatorError(f"{name[:100]!r} is not a local user or group name")
        return cls(kind, name)

    @classmethod
    def home(cls, local_user: str) -> Locator:
        return cls.parse(f"home:{local_user}")

    @classmethod
    def project(cls, local_group: str) -> Locator:
        return cls.parse(f"project:{local_group}")


def check_root_pattern(pattern: str) -> str:
    """A ``drive_roots`` value: ``~``, ``~/sub`` or an absolute path; ``{name}`` is the user or group."""
    if not (pattern == "~" or pattern.startswith(("~/", "/"))):
        raise ValueError(f"a drive root must be absolute or start with ~: {pattern!r}")
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(pattern)]
    except ValueError as error:
        raise ValueError(f"{pattern!r} is not a valid pattern: {error}") from error
    if any(name is not None and (name, spec, conversion) != ("name", "", None) for name, spec, conversion in fields):
        raise ValueError(f"{pattern!r} may only use the field {{name}}, as it is")
    if ".." in pattern.split("/"):
        raise ValueError(f"{pattern!r} contains '..'")
    return pattern
