"""sacctmgr's and sshare's side of the workspace accounts, as pure functions: names checked, argument lists
built, output read, failures classified. :mod:`ucim.slurm_bridge.slurm_accounts` runs them.

What Slurm 22.05.8 does (captured on the local platform; the unit tests replay its output):

* **Names.** sacctmgr lower-cases account names, descriptions and organisations. slurmdbd keeps at most 255
  characters of a name and silently cuts longer ones: a 300-character name was created as its first 255, and a
  256-character one whose first 255 existed already was once "Problem adding accounts: Unspecified error" and
  once "Adding Account(s)" with status 0 and nothing new: two names, one account. A comma makes a list
  (``name=bad,name`` created ``bad`` and ``name``), and a bare name may be read as a keyword (``create account
  set`` is "Need name of account to add"; ``show account set`` lists every account). So every name is checked
  here first (:func:`check_account_name`, :func:`check_user_name`) and goes as ``name=<a>`` / ``where
  name=<a>``, one argv element, never a shell.
* **Outcomes with exit status 1.** "Nothing new added." (create or add of what exists), "Nothing deleted"
  (remove or delete of what is not there), "Nothing modified" (modify of an account that does not exist)
  are answers, not failures; each verb reads them (:func:`outcome`). ``add user`` to a missing account is
  also "Nothing new added." on stdout, with "This account 'x' doesn't exist." on stderr: a refusal.
* **Modify is not a no-op check.** ``modify account ... set`` with the values the account already has is
  "Modified account associations..." and status 0: setting limits is idempotent and needs no read first.
* **maxjobs reaches the members.** ``modify account ... set maxjobs=0`` sets it on the account's user
  associations too, and a user added to an account with ``maxjobs=0`` gets ``0`` as well; grptresmins and
  fairshare stay on the account's own association. ``grptresmins=billing=-1`` removes the billing limit and
  keeps the others (``cpu=10``); ``maxjobs=-1`` shows as empty; ``fairshare=-1`` resets it to 1.
* **Default accounts.** Removing a user's default association while they keep others leaves them with no
  default (``bob||ucimproj``), and their ``sbatch`` without ``--account`` then fails. Removing a user's last
  association deletes the Slurm user. One ``remove user where name=alice,ghost`` that takes ghost's last
  (default) association while alice keeps hers is refused whole: "You can not remove the default account
  of a user ... Changes Discarded".
* **Listing without parent limits.** ``show assoc`` fills every row's limits in from its parents, one query per
  account with members: 1.45 s at 1,000 accounts of one member, 3.7 s at 3,000. ``wopinfo`` shows only the limits
  set on each association, in 0.23 s and 0.25 s. The account rows are the same while the parent sets no limits;
  when it does, ``wopinfo``'s are the account's own, which is what the bridge sets and compares.
* **Unreachable slurmdbd.** "slurm_persist_conn_open_without_init: failed to open persistent connection
  to host:localhost:1: Connection refused" on stderr, status 1, at once: a
  :class:`~ucim.common.slurm_errors.SlurmUnavailableError` (worth retrying), unlike a refusal.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

from ucim.common.slurm_errors import SlurmError, SlurmUnavailableError, clean_slurm_error, is_transient

log = logging.getLogger(__name__)

# What a UCloud/IM account name may be (PROTOCOL-ACCOUNTING §3.2), and slurmdbd's 255 (module docstring).
ACCOUNT_NAME: Final = re.compile(r"[a-z][a-z0-9_-]*")
MAX_ACCOUNT_NAME: Final = 255
# A local user name (useradd's default rule), as the user mapping has it.
USER_NAME: Final = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
CLUSTER_NAME: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
# Slurm's own account: a limit on it is a limit on the whole cluster.
RESERVED_ACCOUNTS: Final = frozenset({"root"})
# Free text that sacctmgr takes as it is: no quotes (it strips them), separators or control characters.
FREE_TEXT: Final = re.compile(r"[A-Za-z0-9 _.:@/()+-]{0,255}")
SEPARATOR: Final = "|"

Verb = Literal["show", "create", "add", "remove", "modify", "delete"]

ASSOCIATION_FIELDS: Final = ("account", "user", "maxjobs", "grptresmins", "fairshare")
USAGE_FIELDS: Final = ("account", "user", "grptresraw")
BILLING: Final = "billing"


class SlurmNameError(ValueError):
    """A name that must not reach sacctmgr; raised before any command runs."""


class SacctmgrRefusedError(SlurmError):
    """sacctmgr answered and refused (an unknown account, jobs still active, ...): retrying will not help."""


# --------------------------------------------------------------------------- names


def _shown(value: object) -> str:
    return repr(value)[:80] if isinstance(value, str) else type(value).__name__


def check_account_name(name: object) -> str:
    """``name`` if sacctmgr takes it as it is, one account; SlurmNameError saying why otherwise.

    ``fullmatch``, not ``match``: ``$`` also matches before a trailing newline.
    """
    if not isinstance(name, str) or not ACCOUNT_NAME.fullmatch(name):
        raise SlurmNameError(
            f"{_shown(name)} is not a valid Slurm account name (a lower-case letter, then a-z, 0-9, _ or -)"
        )
    if len(name) > MAX_ACCOUNT_NAME:
        raise SlurmNameError(
            f"{_shown(name)} is {len(name)} characters long; Slurm keeps {MAX_ACCOUNT_NAME} and cuts the rest"
        )
    if name in RESERVED_ACCOUNTS:
        raise SlurmNameError(f"{name!r} is Slurm's own account and is not managed here")
    return name


def check_user_name(name: object) -> str:
    if not isinstance(name, str) or not USER_NAME.fullmatch(name):
        raise SlurmNameError(f"{_shown(name)} is not a valid user name (a-z or _, then a-z, 0-9, _ . -; 32 at most)")
    return name


def check_user_names(names: Iterable[str]) -> list[str]:
    """The names sorted and without duplicates, each checked."""
    return sorted({check_user_name(n) for n in names})


def check_cluster_name(name: str) -> str:
    if not CLUSTER_NAME.fullmatch(name):
        raise SlurmNameError(f"{_shown(name)} is not a valid Slurm cluster name")
    return name


def check_free_text(value: str, what: str) -> str:
    if not FREE_TEXT.fullmatch(value):
        raise SlurmNameError(
            f"the {what} {_shown(value)} may hold only letters, digits, spaces and _ . : @ / ( ) + - (255 at most)"
        )
    return value


# --------------------------------------------------------------------------- argument lists (after "sacctmgr")


def _cluster(cluster: str | None) -> list[str]:
    return [f"cluster={cluster}"] if cluster else []


def show_associations_args(cluster: str | None, account: str | None = None) -> list[str]:
    """Every association (account rows have an empty user) with its own limits: the snapshot's one call; or only
    ``account``'s (none at all, status 0, when there is no such account). ``wopinfo``: module docstring."""
    where = [*_cluster(cluster), *([f"account={account}"] if account else [])]
    return ["-nP", "show", "assoc", *(["where", *where] if where else []), "wopinfo",
            f"format={','.join(ASSOCIATION_FIELDS)}"]  # fmt: skip


def create_account_args(
    name: str, *, description: str, organization: str, fairshare: int, parent: str | None, cluster: str | None
) -> list[str]:
    check_count(fairshare, "a fairshare")
    args = ["-i", "create", "account", f"name={name}"]
    if description:
        args.append(f"description={description}")
    if organization:
        args.append(f"organization={organization}")
    if parent:
        args.append(f"parent={parent}")
    return [*args, *_cluster(cluster), "maxjobs=-1", "maxsubmitjobs=-1", f"fairshare={fairshare}"]


def add_users_args(name: str, users: list[str], cluster: str | None) -> list[str]:
    return ["-i", "add", "user", f"name={','.join(users)}", f"account={name}", *_cluster(cluster)]


def remove_users_args(name: str, users: list[str], cluster: str | None) -> list[str]:
    return ["-i", "remove", "user", "where", f"name={','.join(users)}", f"account={name}", *_cluster(cluster)]


def user_accounts_args(users: list[str], cluster: str | None) -> list[str]:
    """Each user's default account and every account they are in, one row per association."""
    return ["-nP", "show", "user", "where", f"name={','.join(users)}", *_cluster(cluster), "withassoc",
            "format=user,defaultaccount,account"]  # fmt: skip


def set_default_account_args(user: str, account: str, cluster: str | None) -> list[str]:
    return ["-i", "modify", "user", "where", f"name={user}", *_cluster(cluster), "set", f"defaultaccount={account}"]


def check_count(value: int, what: str) -> int:
    """A whole number >= 0 (``-1`` means "no limit" to sacctmgr: that is for this module to write)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} is a whole number >= 0, not {value!r}")
    return value


def limits_args(
    name: str, *, locked: bool, quota_minutes: int | None, fairshare: int | None, cluster: str | None
) -> list[str]:
    """``locked`` → maxjobs=0 (jobs are accepted and wait, AssocMaxJobsLimit), else -1; no quota → billing=-1."""
    if quota_minutes is not None:
        check_count(quota_minutes, "a quota in billing minutes")
    if fairshare is not None:
        check_count(fairshare, "a fairshare")
    settings = [
        f"maxjobs={0 if locked else -1}",
        f"grptresmins={BILLING}={-1 if quota_minutes is None else quota_minutes}",
    ]
    if fairshare is not None:
        settings.append(f"fairshare={fairshare}")
    return ["-i", "modify", "account", "where", f"name={name}", *_cluster(cluster), "set", *settings]


def delete_account_args(name: str, cluster: str | None) -> list[str]:
    return ["-i", "delete", "account", "where", f"name={name}", *_cluster(cluster)]


def usage_args() -> list[str]:
    """sshare's account rows and the billing minutes used (arguments after ``sshare``)."""
    return ["-Pho", ",".join(USAGE_FIELDS)]


# --------------------------------------------------------------------------- output


@dataclass(frozen=True, slots=True)
class AccountState:
    """One Slurm account as the snapshot saw it. ``max_jobs`` None is no limit; ``fairshare`` None is "parent"."""

    name: str
    users: frozenset[str] = frozenset()
    max_jobs: int | None = None
    grp_tres_mins: dict[str, int] = field(default_factory=dict)
    fairshare: int | None = None

    @property
    def locked(self) -> bool:
        return self.max_jobs == 0

    @property
    def quota_minutes(self) -> int | None:
        return self.grp_tres_mins.get(BILLING)


def _int_or_none(text: str) -> int | None:
    value = text.strip()
    return int(value) if value.lstrip("-").isdigit() else None


def parse_tres(text: str) -> dict[str, int]:
    """``cpu=10,billing=100`` → ``{"cpu": 10, "billing": 100}``; entries without a number are left out."""
    tres: dict[str, int] = {}
    for item in text.strip().split(","):
        key, sep, value = item.partition("=")
        if sep and key and value.isdigit():
            tres[key] = int(value)
    return tres


def parse_associations(stdout: str) -> dict[str, AccountState]:
    """Lines of :func:`show_associations_args` → account name → its state (limits from the account's row)."""
    rows: dict[str, dict[str, str]] = {}
    users: dict[str, set[str]] = {}
    for line in stdout.splitlines():
        if not line.strip():
            continue
        fields = line.split(SEPARATOR)
        if len(fields) != len(ASSOCIATION_FIELDS):
            log.warning("Unexpected sacctmgr association line", extra={"line": line[:300]})
            continue
        account, user, max_jobs, grp_tres_mins, fairshare = (f.strip() for f in fields)
        users.setdefault(account, set())
        if user:
            users[account].add(user)
        else:
            rows[account] = {"max_jobs": max_jobs, "grp_tres_mins": grp_tres_mins, "fairshare": fairshare}
    states = {}
    for account, members in users.items():
        row = rows.get(account, {})
        states[account] = AccountState(
            name=account,
            users=frozenset(members),
            max_jobs=_int_or_none(row.get("max_jobs", "")),
            grp_tres_mins=parse_tres(row.get("grp_tres_mins", "")),
            fairshare=_int_or_none(row.get("fairshare", "")),
        )
    return states


def parse_user_accounts(stdout: str) -> dict[str, tuple[str, set[str]]]:
    """Lines of :func:`user_accounts_args` → user → (default account, accounts)."""
    users: dict[str, tuple[str, set[str]]] = {}
    for line in stdout.splitlines():
        fields = [f.strip() for f in line.split(SEPARATOR)]
        if len(fields) != 3 or not fields[0]:
            continue
        user, default, account = fields
        _, accounts = users.setdefault(user, (default, set()))
        if account:
            accounts.add(account)
    return users


_BILLING_RAW: Final = re.compile(rf"(?:^|,){BILLING}=(\d+)")


def parse_usage(stdout: str) -> dict[str, int]:
    """Lines of ``sshare -Pho account,user,grptresraw`` → account → billing minutes used.

    Only account rows (empty user); sshare indents the account by its depth in the tree, even with -P.
    """
    usage: dict[str, int] = {}
    for line in stdout.splitlines():
        fields = line.split(SEPARATOR)
        if len(fields) != len(USAGE_FIELDS) or fields[1].strip():
            continue
        account = fields[0].strip()
        if account and (match := _BILLING_RAW.search(fields[2].strip())):
            usage[account] = int(match.group(1))
    return usage


# --------------------------------------------------------------------------- outcomes and failures

Outcome = Literal["done", "nothing_added", "nothing_deleted", "nothing_modified"]
_NOTHING: Final[tuple[tuple[str, Outcome], ...]] = (
    ("nothing new added", "nothing_added"),
    ("nothing deleted", "nothing_deleted"),
    ("nothing modified", "nothing_modified"),
)
# stderr lines that mean the request was refused even though sacctmgr also said "Nothing new added."
_REFUSALS: Final = ("doesn't exist", "does not exist", "error", "problem", "can't", "cannot", "invalid")


def sacctmgr_words(stdout: str, stderr: str, *, limit: int = 1000) -> str:
    """What sacctmgr said, on one line: stderr's cleaned lines, then stdout's."""
    words = "; ".join(part for part in (clean_slurm_error(stderr), clean_slurm_error(stdout)) if part)
    return words if len(words) <= limit else words[:limit] + "…"


def outcome(returncode: int, stdout: str, stderr: str) -> Outcome | None:
    """``done`` (status 0), one of the "nothing" answers, or None: a failure for :func:`failure`."""
    if returncode == 0:
        return "done"
    if returncode != 1 or any(word in stderr.lower() for word in _REFUSALS):
        return None
    lowered = stdout.lower()
    return next((answer for text, answer in _NOTHING if text in lowered), None)


def failure(what: str, returncode: int, stdout: str, stderr: str, command: Iterable[str]) -> SlurmError:
    """A refusal (:class:`SacctmgrRefusedError`) or, when slurmdbd is out of reach, a SlurmUnavailableError."""
    detail = sacctmgr_words(stdout, stderr) or f"exit status {returncode}"
    kind = SlurmUnavailableError if is_transient(detail) else SacctmgrRefusedError
    return kind(f"{what} failed", detail=detail, command=tuple(command), returncode=returncode)


def sshare_failure(returncode: int, stderr: str, command: Iterable[str]) -> SlurmError:
    """sshare's failure: SlurmUnavailableError when slurmctld is out of reach, else a SlurmError with its words."""
    detail = clean_slurm_error(stderr) or f"exit status {returncode}"
    kind = SlurmUnavailableError if is_transient(detail) else SlurmError
    return kind("sshare failed", detail=detail, command=tuple(command), returncode=returncode)
