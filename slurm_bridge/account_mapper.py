"""Which Slurm account a workspace's use of a compute product category is charged to: the account mapper.

For each UCloud workspace (a user's own, or a project) and compute product category the bridge keeps one
Slurm account. Its name comes from one of two mappers, chosen with ``type``:

``pattern`` (default)
    Two patterns, ``users`` and ``projects``, with ``#{key}`` placeholders replaced literally:

    ==============  ===========================================================================
    workspace       keys
    ==============  ===========================================================================
    a user's own    ``localUsername``, ``uid``, ``ucloudUsername``, ``productCategory``
    a project       ``localGroupName``, ``gid``, ``ucloudProjectId``, ``productCategory``
    ==============  ===========================================================================

    Defaults: ``#{localUsername}_#{productCategory}`` and ``#{localGroupName}_#{productCategory}``
    (alice's ``u1-standard`` account is ``alice_u1-standard``). A pattern with an unknown key, or one that
    cannot name even an example workspace (``#{uid}`` alone starts with a digit), is refused when the
    settings are loaded.

``script``
    A site script is run as ``[script, <file>]``, where ``<file>`` is a JSON object (mode 0600, removed
    afterwards) of the same keys, all string values as UCloud/IM writes them; it prints
    ``{"accountName": "..."}`` on stdout and exits 0 within the timeout. Like the user-mapping script it must
    be an absolute path owned by root and writable by no one else: the bridge runs it as root.

``ucloudUsername`` holds the **local** username, as in UCloud/IM (PROTOCOL-ACCOUNTING §3.1). We keep that
quirk on purpose: accounts are long-lived (Slurm keeps their usage and fairshare history), and a site moving
from UCloud/IM with ``#{ucloudUsername}`` in its pattern must get the very accounts it already has. The real
UCloud name (``Donna#1234``) would rarely make a valid account name anyway.

The result, of either mapper, is lower-cased (sacctmgr folds account names to lower case itself, so two
names that differ only in case were one Slurm account already) and must then be a valid account name
(:func:`ucim.slurm_bridge.sacctmgr.check_account_name`). Nothing else is rewritten: a character Slurm does
not allow is an :class:`AccountMappingError` naming the value it came from, never replaced by ``_``, which
could give two workspaces one account. A site whose group names or categories hold such characters uses a
pattern without them (``#{gid}``) or a script.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ucim.slurm_bridge import site_commands
from ucim.slurm_bridge.sacctmgr import SlurmNameError, check_account_name

PLACEHOLDER: Final = re.compile(r"#\{([^{}]*)\}")
_WHAT: Final = "the account-mapper script"


class AccountMappingError(Exception):
    """No valid Slurm account name for a workspace; the message says why, for the site's admins."""


# --------------------------------------------------------------------------- workspaces


@dataclass(frozen=True, slots=True)
class UserWorkspace:
    """A user's own workspace, by its local account."""

    local_username: str
    uid: int


@dataclass(frozen=True, slots=True)
class ProjectWorkspace:
    """A project, by its local group (PROTOCOL-ACCOUNTING §3.4)."""

    local_group_name: str
    gid: int
    ucloud_project_id: str


Workspace = UserWorkspace | ProjectWorkspace


def variables(workspace: Workspace, product_category: str) -> dict[str, str]:
    """The ``#{key}`` values of a workspace, as strings (what the pattern fills in and the script reads)."""
    if isinstance(workspace, UserWorkspace):
        return {
            "localUsername": workspace.local_username,
            "uid": str(workspace.uid),
            # UCloud/IM's quirk, kept on purpose (module docstring): the local username.
            "ucloudUsername": workspace.local_username,
            "productCategory": product_category,
        }
    return {
        "localGroupName": workspace.local_group_name,
        "gid": str(workspace.gid),
        "ucloudProjectId": workspace.ucloud_project_id,
        "productCategory": product_category,
    }


# --------------------------------------------------------------------------- settings


# What a pattern is tried with when it is configured: one that cannot name these cannot name anything.
EXAMPLES: Final = (
    (UserWorkspace("alice", 1101), "users"),
    (ProjectWorkspace("myproject", 5234281, "94056ba8-7ac0-4d4b-9bbd-4a8b5c3d2e1f"), "projects"),
)
EXAMPLE_CATEGORY: Final = "u1-standard"


def account_name(raw: str, origin: str) -> str:
    """``raw`` lower-cased, if that is a valid Slurm account name; AccountMappingError saying where it came from."""
    name = raw.lower()
    try:
        return check_account_name(name)
    except SlurmNameError as error:
        raise AccountMappingError(f"{origin} gives {raw!r}, which cannot be a Slurm account: {error}") from None


def fill_pattern(pattern: str, values: dict[str, str]) -> str:
    """``pattern`` with each ``#{key}`` replaced by its value, literally; AccountMappingError for an unknown key."""

    def value(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            known = ", ".join(f"#{{{k}}}" for k in sorted(values))
            raise AccountMappingError(f"unknown key #{{{key}}} in account pattern {pattern!r}; it may use {known}")
        return values[key]

    return PLACEHOLDER.sub(value, pattern)


def check_pattern(pattern: str, which: Literal["users", "projects"]) -> str:
    """``pattern`` if it uses only its keys and names the example workspace validly; AccountMappingError if not."""
    for workspace, name in EXAMPLES:
        if name == which:
            account_name(
                fill_pattern(pattern, variables(workspace, EXAMPLE_CATEGORY)),
                f"the {which} account pattern {pattern!r}, for example {workspace} and {EXAMPLE_CATEGORY!r},",
            )
    return pattern


class AccountMapperSettings(BaseModel):
    """The workspaces' Slurm accounts: how they are named (the module docstring), and how often all are re-read;
    nests in the bridge's settings (``accounting.accounts``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["pattern", "script"] = "pattern"
    # #{key} placeholders, replaced literally; the result is lower-cased and must be a valid account name.
    users: str = "#{localUsername}_#{productCategory}"
    projects: str = "#{localGroupName}_#{productCategory}"
    # The site's script (type "script"): absolute, owned by root, writable by root only.
    script: Path | None = None
    script_timeout_seconds: float = Field(default=10.0, gt=0)
    # All accounts are read from Slurm this often to find changes made by hand; in between, the bridge trusts its
    # view (slurm_bridge/accounts_view.py). 0: before every pass.
    resync_seconds: float = Field(default=600.0, ge=0)

    @field_validator("users", "projects")
    @classmethod
    def _a_pattern_that_names_accounts(cls, pattern: str, info: ValidationInfo) -> str:
        which: Literal["users", "projects"] = "users" if info.field_name == "users" else "projects"
        try:
            return check_pattern(pattern, which)
        except AccountMappingError as error:
            raise ValueError(str(error)) from None

    @model_validator(mode="after")
    def _a_script_when_scripted(self) -> Self:
        if self.type == "script" and self.script is None:
            raise ValueError("the account mapper is 'script' but no script is configured")
        return self


class AccountMapper(Protocol):
    async def account(self, workspace: Workspace, product_category: str) -> str:
        """The Slurm account of ``workspace``'s use of ``product_category``, or AccountMappingError."""
        ...


class PatternAccountMapper:
    """Names accounts by the two patterns; pure, so it is also what the tests and tools call directly."""

    def __init__(self, users: str, projects: str) -> None:
        self.users = check_pattern(users, "users")
        self.projects = check_pattern(projects, "projects")

    def name(self, workspace: Workspace, product_category: str) -> str:
        pattern = self.users if isinstance(workspace, UserWorkspace) else self.projects
        values = variables(workspace, product_category)
        return account_name(fill_pattern(pattern, values), f"pattern {pattern!r} with {values}")

    async def account(self, workspace: Workspace, product_category: str) -> str:
        return self.name(workspace, product_category)


class ScriptAccountMapper:
    """Asks the site's script (module docstring); every answer is validated like a pattern's result."""

    def __init__(self, script: Path, timeout_seconds: float = 10.0) -> None:
        self.script = script
        self.timeout_seconds = timeout_seconds

    async def account(self, workspace: Workspace, product_category: str) -> str:
        values = variables(workspace, product_category)
        try:
            finished = await site_commands.run_script(
                self.script, values, what=_WHAT, timeout_seconds=self.timeout_seconds
            )
        except site_commands.CommandError as error:
            raise AccountMappingError(str(error)) from error
        if finished.returncode != 0:
            raise AccountMappingError(
                f"{_WHAT} {self.script} failed for {values} (exit status {finished.returncode}):"
                f" {finished.stderr_tail() or '(no stderr)'}"
            )
        return account_name(name_from_answer(finished.stdout), f"{_WHAT} {self.script} for {values}")


def name_from_answer(stdout: bytes) -> str:
    """The ``accountName`` of the script's ``{"accountName": "..."}``; AccountMappingError for anything else."""
    try:
        answer = json.loads(stdout)
    except ValueError as error:
        raise AccountMappingError(f"{_WHAT} printed no JSON: {error}") from None
    name = answer.get("accountName") if isinstance(answer, dict) else None
    if not isinstance(name, str):
        printed = stdout[:200].decode("utf-8", "replace").strip()
        raise AccountMappingError(f'{_WHAT} must print {{"accountName": "..."}}, not {printed!r}')
    return name


def account_mapper(settings: AccountMapperSettings) -> AccountMapper:
    """The mapper the settings choose."""
    if settings.type == "pattern":
        return PatternAccountMapper(settings.users, settings.projects)
    if settings.script is None:
        raise AccountMappingError("the account mapper is 'script' but no script is configured")
    return ScriptAccountMapper(settings.script, settings.script_timeout_seconds)
