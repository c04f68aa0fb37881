"""Which local UNIX account a UCloud user is: the mapping policy.

A UserInstance names a UCloud user; the bridge maps it once to a local account and
records ``spec.localUser`` and ``spec.uid`` (which the CRD then forbids changing). Two
policies, chosen with ``UCIM_BRIDGE_MAPPING__POLICY``:

``pattern`` (default)
    ``UCIM_BRIDGE_MAPPING__PATTERN``, default ``"{username}"``, is filled in and names
    the local account. Fields: ``{username}`` (the sanitised UCloud username) and
    ``{suffix}`` (the digits of a ``#1234`` suffix, or empty). Sanitising, in order:

    1. a trailing ``#<digits>`` suffix is cut off (``Alice#1234`` → ``Alice``);
    2. the name is Unicode-decomposed (NFKD) and every non-ASCII character is dropped
       (``Jørgen`` → ``jrgen``, ``Émile`` → ``emile``);
    3. it is lower-cased, and every character other than ``a-z 0-9 . _ -`` is dropped
       (``anne marie@sdu.dk`` → ``annemariesdu.dk``);
    4. leading characters that cannot start a UNIX name (digits, ``.``, ``-``) are dropped.

    The result must be a valid UNIX name (``^[a-z_][a-z0-9_.-]{0,31}$``) that exists in
    the password database; otherwise the user is refused. Since sanitising can map two
    UCloud users to one name, ``pattern`` suits sites whose UCloud usernames are the
    local ones; otherwise use ``script``.

``script``
    ``UCIM_BRIDGE_MAPPING__SCRIPT`` is run (as the bridge's user, with an empty
    environment but PATH, within ``MAPPING__SCRIPT_TIMEOUT_SECONDS``) with
    ``{"ucloudUsername": "..."}`` on stdin, as UCloud/IM's ``onUserConnected`` and Open
    OnDemand's user-map scripts are. It prints ``{"localUser": "..."}`` or ``{"uid": N}``
    and exits 0; a non-zero exit refuses the user, with the script's last stderr line as
    the reason. The script must be an absolute path, owned by root and writable by no one
    else (a script others can change would let them choose who runs as whom).

Whatever the policy, the account is refused when it does not exist, when its uid is
below ``MAPPING__MIN_UID`` (default 1000: system accounts and root), or when its shell is
``nologin`` or ``false`` (accounts that may not log in may not run jobs either). The
same checks run again at every spawn, so an account that was locked since is refused.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import string
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, Field, field_validator

from ucim.slurm_bridge import site_commands

# What useradd accepts by default; the UserInstance CRD checks the same shape.
LOCAL_NAME: Final = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
_SUFFIX: Final = re.compile(r"#(\d+)$")
_NOT_NAME: Final = re.compile(r"[^a-z0-9_.-]+")
_NO_LOGIN_SHELLS: Final = frozenset({"nologin", "false"})
_PATTERN_FIELDS: Final = frozenset({"username", "suffix"})


class MappingRefusedError(Exception):
    """The UCloud user has no usable local account; the message says why, for people."""


class MappingSettings(BaseModel):
    policy: Literal["pattern", "script"] = "pattern"
    pattern: str = "{username}"
    script: Path | None = None
    script_timeout_seconds: float = Field(default=10.0, gt=0)
    min_uid: int = Field(default=1000, ge=1)

    @field_validator("pattern")
    @classmethod
    def _only_known_fields(cls, pattern: str) -> str:
        for _, field, spec, conversion in string.Formatter().parse(pattern):
            if field is None:
                continue
            if field not in _PATTERN_FIELDS or spec or conversion:
                raise ValueError(f"the pattern may only use {{username}} and {{suffix}}, not {{{field}}}")
        return pattern


@dataclass(frozen=True, slots=True)
class LocalAccount:
    """A local account as the fork server needs it to drop privileges."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    login_shell: str


def sanitise(ucloud_username: str) -> tuple[str, str]:
    """``(username, suffix)`` of a UCloud username, by the rules in this module's docstring."""
    suffix = ""
    if match := _SUFFIX.search(ucloud_username):
        suffix = match.group(1)
        ucloud_username = ucloud_username[: match.start()]
    ascii_only = unicodedata.normalize("NFKD", ucloud_username).encode("ascii", "ignore").decode()
    name = _NOT_NAME.sub("", ascii_only.lower())
    return name.lstrip("0123456789.-"), suffix


def name_from_pattern(pattern: str, ucloud_username: str) -> str:
    username, suffix = sanitise(ucloud_username)
    if not username:
        raise MappingRefusedError(f"no local username can be derived from UCloud user {ucloud_username!r}")
    name = pattern.format(username=username, suffix=suffix)
    if not LOCAL_NAME.fullmatch(name):
        raise MappingRefusedError(f"{name!r} (from UCloud user {ucloud_username!r}) is not a valid local username")
    return name


def account(entry: pwd.struct_passwd) -> LocalAccount:
    return LocalAccount(
        name=entry.pw_name,
        uid=entry.pw_uid,
        gid=entry.pw_gid,
        groups=tuple(sorted(set(os.getgrouplist(entry.pw_name, entry.pw_gid)))),
        home=entry.pw_dir,
        login_shell=entry.pw_shell,
    )


def check_account(entry: LocalAccount, min_uid: int) -> LocalAccount:
    """``entry`` if the policy lets it run an instance; MappingRefusedError otherwise."""
    if entry.uid < min_uid or entry.uid == 0:
        raise MappingRefusedError(f"local user {entry.name} has uid {entry.uid}, below the minimum {min_uid}")
    if entry.gid == 0 or 0 in entry.groups:
        raise MappingRefusedError(f"local user {entry.name} is in group 0 (root)")
    if Path(entry.login_shell).name in _NO_LOGIN_SHELLS:
        raise MappingRefusedError(f"local user {entry.name} may not log in (shell {entry.login_shell})")
    if not entry.home.startswith("/"):
        raise MappingRefusedError(f"local user {entry.name} has no home directory")
    return entry


def account_by_name(name: str, min_uid: int) -> LocalAccount:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise MappingRefusedError(f"there is no local user {name!r}") from None
    return check_account(account(entry), min_uid)


def account_by_uid(uid: int, min_uid: int) -> LocalAccount:
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        raise MappingRefusedError(f"there is no local user with uid {uid}") from None
    return check_account(account(entry), min_uid)


class Mapper:
    """Maps UCloud usernames to local accounts by the configured policy."""

    def __init__(self, settings: MappingSettings) -> None:
        self.settings = settings

    async def map(self, ucloud_username: str) -> LocalAccount:
        """The local account of a UCloud user, or MappingRefusedError."""
        if self.settings.policy == "pattern":
            return account_by_name(name_from_pattern(self.settings.pattern, ucloud_username), self.settings.min_uid)
        return await self._run_script(ucloud_username)

    def resolve(self, uid: int, local_user: str | None) -> LocalAccount:
        """The account a mapped instance runs as, checked again now; its name must not have changed."""
        entry = account_by_uid(uid, self.settings.min_uid)
        if local_user is not None and entry.name != local_user:
            raise MappingRefusedError(f"uid {uid} now belongs to {entry.name}, not to {local_user}")
        return entry

    async def _run_script(self, ucloud_username: str) -> LocalAccount:
        script = self.settings.script
        if script is None:
            raise MappingRefusedError("the mapping policy is 'script' but no script is configured")
        check_script(script)
        request = json.dumps({"ucloudUsername": ucloud_username}).encode() + b"\n"
        try:
            finished = await site_commands.run(
                [str(script)],
                what="the mapping script",
                timeout_seconds=self.settings.script_timeout_seconds,
                stdin=request,
            )
        except site_commands.CommandError as error:
            raise MappingRefusedError(str(error)) from error
        if finished.returncode != 0:
            why = finished.stderr_tail(lines=1, chars=300) or f"it exited with status {finished.returncode}"
            raise MappingRefusedError(f"the mapping script refused {ucloud_username!r}: {why}")
        return self._account_from_answer(finished.stdout)

    def _account_from_answer(self, out: bytes) -> LocalAccount:
        try:
            answer = json.loads(out)
        except ValueError as error:
            raise MappingRefusedError(f"the mapping script printed no JSON: {error}") from error
        if isinstance(answer, dict) and isinstance(answer.get("localUser"), str):
            name: str = answer["localUser"]
            if not LOCAL_NAME.fullmatch(name):
                raise MappingRefusedError(f"the mapping script answered {name!r}, which is not a valid local username")
            return account_by_name(name, self.settings.min_uid)
        if isinstance(answer, dict) and isinstance(answer.get("uid"), int) and not isinstance(answer["uid"], bool):
            return account_by_uid(answer["uid"], self.settings.min_uid)
        raise MappingRefusedError('the mapping script must print {"localUser": "..."} or {"uid": N}')


def check_script(script: Path) -> None:
    """Refuse a mapping script that someone other than root could change."""
    try:
        site_commands.check_script(script, "the mapping script")
    except site_commands.CommandError as error:
        raise MappingRefusedError(str(error)) from error
