"""The accounting half of the UCloud/Core stand-in: projects, wallets, the event stream and reportUsage.

What a provider meets (PROTOCOL-ACCOUNTING.md §1-2, core2 ``accounting/``):

* ``GET /api/accounting/notifications``, a websocket with no HTTP auth. The first frame
  must be an auth frame (op 0) with a provider access token, else the socket is dropped
  without a word (no close frame, as gorilla's ``Close`` does). Then Core replays the
  wallets whose last significant update is at or after the replay point, and the projects
  changed after it that have a wallet here; then, live, every significant wallet change
  (allocation, lock flip) and every project change. One frame per event, users before
  projects before categories before wallets, each ref sent before its first use. No
  pings, no error frames. Op 5 replays one user's wallets and projects. Wallets of
  free-to-use categories are never sent live, but replayed when they have an allocation.
* ``POST /api/accounting/v2/reportUsage``: absolute or delta usage per (owner, category,
  optional scope); a wallet whose usage reaches its quota locks. The body is checked as
  strictly as job updates are (every key Go writes, JSON types Go's parser accepts); then
  each item is judged as core2 judges it, in order, and the first refusal fails the call
  with the earlier items applied.

The model is a flat one (every wallet is allocated from the root): quota, usage, lock.
Tests drive it with ``create_project``, ``set_members``, ``grant``, ``set_locked`` and read
it back with ``wallet``, ``usage_reports`` and ``auth_frames``. ``registerProviderGift`` is
not served: core2 has no handler for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from aiohttp import WSMessage, WSMsgType, web

from ucim.common.accounting_stream import (
    FLAG_INCLUDE_RETIRED,
    WALLET_LOCKED,
    WALLET_PROJECT,
    Auth,
    ReplayUser,
    StreamProtocolError,
    Workspace,
    decode_client_frame,
    encode_category,
    encode_project,
    encode_user,
    encode_wallet,
)
from ucim.common.protocol import (
    ProductCategory,
    ProductV2,
    Project,
    ProjectMember,
    ProjectSpecification,
    ProjectStatus,
    ReportUsageRequest,
    now_ms,
)

NOTIFICATIONS_PATH: Final = "/api/accounting/notifications"
REPORT_USAGE_PATH: Final = "/api/accounting/v2/reportUsage"
_INT64: Final = range(-(2**63), 2**63)
_QUOTAS: Final = range(2**63)
_ROLES: Final[frozenset[str]] = frozenset({"PI", "ADMIN", "USER"})
# How long disconnect_sessions() waits for a dropped session's handler to finish.
_DISCONNECT_WAIT_SECONDS: Final = 5.0


class WalletView(NamedTuple):
    """A wallet as a test reads it; amounts in the category's unit."""

    quota: int
    usage: int
    locked: bool


@dataclass(frozen=True)
class UsageReport:
    """One reportUsage item Core accepted, and what it answered (True: the wallet is not locked)."""

    received_at: float  # time.time()
    owner: Workspace
    category: str
    usage: int
    is_delta: bool
    scope: str | None
    description: str | None
    not_locked: bool


@dataclass(frozen=True)
class StreamAuth:
    """An auth frame (op 0) received on the notifications socket, accepted or not."""

    received_at: float  # time.time()
    replay_from_ms: int
    flags: int
    accepted: bool


class UsageRefusedError(Exception):
    """Core refuses a reportUsage call: ``status`` and ``why`` as Core answers them."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


@dataclass
class _Wallet:
    owner: Workspace
    category: str
    quota: int = 0
    allocated: bool = False
    usage: int = 0  # core2's LocalUsage: what absolute reports without a scope replace
    lock_override: bool | None = None  # set_locked(); None: locked when nothing is left
    was_locked: bool = False  # core2's WasLocked: a flip is a significant update
    last_update_ms: int = 0

    @property
    def locked(self) -> bool:
        if self.lock_override is not None:
            return self.lock_override
        return self.usage >= self.quota  # core2: MaxUsable <= 0

    def view(self) -> WalletView:
        return WalletView(self.quota, self.usage, self.locked)


# --- the notifications socket -------------------------------------------------


@dataclass(frozen=True)
class _WalletOut:
    """A wallet as it was at a significant update, with its owning project for a first send."""

    owner: Workspace
    category: ProductCategory
    quota: int
    usage: int
    locked: bool
    last_update_ms: int
    project: Project | None


@dataclass(frozen=True)
class _ProjectOut:
    project: Project


_Outgoing = _WalletOut | _ProjectOut


def _ref(refs: dict[str, int], key: str) -> tuple[int, bool]:
    """The connection's ref for ``key``, and whether it is new (refs count from 0 per kind)."""
    if key in refs:
        return refs[key], False
    refs[key] = len(refs)
    return refs[key], True


class _Session:
    """One open notifications socket: its refs and what is still to be written."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.ws = ws
        self.request = request
        self.authenticated = False  # events go only to authenticated sessions
        self.include_retired = False
        self.outbox: asyncio.Queue[_Outgoing] = asyncio.Queue()
        self.finished = asyncio.Event()
        self._users: dict[str, int] = {}
        self._projects: dict[str, int] = {}
        self._categories: dict[str, int] = {}

    def queue(self, items: Iterable[_Outgoing]) -> None:
        for item in items:
            self.outbox.put_nowait(item)

    def frame(self, item: _Outgoing) -> bytes:
        """One flush, as core2 writes it: users, then projects, then categories, then wallets."""
        users: list[bytes] = []
        projects: list[bytes] = []
        categories: list[bytes] = []
        wallets: list[bytes] = []
        if isinstance(item, _ProjectOut):
            ref, _ = _ref(self._projects, item.project.id)  # a changed project keeps its ref
            projects.append(encode_project(ref, item.project.modified_at, item.project))
            return b"".join(projects)
        flags = WALLET_LOCKED if item.locked else 0
        if item.project is not None:
            workspace_ref, new = _ref(self._projects, item.project.id)
            if new:
                projects.append(encode_project(workspace_ref, item.project.modified_at, item.project))
            flags |= WALLET_PROJECT
        else:
            workspace_ref, new = _ref(self._users, item.owner.id)
            if new:
                users.append(encode_user(workspace_ref, item.owner.id))
        category_ref, new = _ref(self._categories, item.category.name)
        if new:
            categories.append(encode_category(category_ref, item.category))
        wallets.append(
            encode_wallet(
                workspace_ref,
                category_ref,
                combined_quota=item.quota,
                total_usage=item.usage,
                flags=flags,
                last_update_ms=item.last_update_ms,
                local_retired_usage=0 if self.include_retired else None,  # always 0 in core2
            )
        )
        return b"".join(users + projects + categories + wallets)

    async def write(self) -> None:
        """Send each queued event as one binary frame until the socket fails."""
        while True:
            item = await self.outbox.get()
            try:
                await self.ws.send_bytes(self.frame(item))
            except ConnectionError:
                self.drop()
                return

    def drop(self) -> None:
        """Close the TCP connection without a close frame, as core2 does on any error."""
        if self.request.transport is not None:
            self.request.transport.close()


def _frame_bytes(message: WSMessage) -> bytes | None:
    """A client frame's bytes; core2 reads text frames too (IM2 sends its auth frame as text).

    Unlike gorilla, aiohttp refuses a text frame that is not UTF-8 (an auth frame with a
    negative replay point is not), so such a client is dropped here: send binary frames.
    """
    if message.type == WSMsgType.BINARY:
        data: bytes = message.data
        return data
    if message.type == WSMsgType.TEXT:
        text: str = message.data
        return text.encode()
    return None


# --- the accounting state -----------------------------------------------------


class CoreAccounting:
    """Core's projects and wallets for one provider, its notifications socket and reportUsage.

    ``products`` is read live (the stand-in's list of registered products): the provider's
    categories are those of its registered products. ``authenticate`` says whether a token
    is this provider's access token.
    """

    def __init__(
        self,
        provider_id: str,
        products: Sequence[ProductV2],
        authenticate: Callable[[str], bool],
        *,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.provider_id = provider_id
        self._products = products
        self._authenticate = authenticate
        self.clock = clock
        self.users: set[str] = set()
        self.projects: dict[str, Project] = {}
        self._wallets: dict[tuple[Workspace, str], _Wallet] = {}
        # core2 keys scoped usage on (owner, scope), not on the category.
        self._scoped_usage: dict[tuple[Workspace, str], int] = {}
        self.usage_reports: list[UsageReport] = []
        self.auth_frames: list[StreamAuth] = []
        self._sessions: set[_Session] = set()
        self.changed = asyncio.Condition()

    # --- reading the state ---

    def categories(self) -> dict[str, ProductCategory]:
        """This provider's product categories by name; a later registration wins."""
        found = {}
        for product in self._products:
            if product.category.provider == self.provider_id:
                found[product.category.name] = product.category
        return found

    def wallet(self, owner: Workspace, category: str) -> WalletView:
        """(quota, usage, locked); a wallet nobody granted or charged is empty and locked."""
        wallet = self._wallets.get((owner, category)) or _Wallet(owner, category)
        return wallet.view()

    @property
    def open_sessions(self) -> int:
        """Authenticated notifications sockets now open."""
        return len(self._live_sessions())

    # --- changing it (tests) ---

    def add_user(self, username: str) -> None:
        """Make ``username`` a UCloud user (members and granted users become users by themselves)."""
        self.users.add(username)

    def create_project(
        self,
        title: str,
        members: Mapping[str, str],
        *,
        can_consume_resources: bool = True,
        parent: str | None = None,
        personal_provider_project_for: str | None = None,
    ) -> str:
        """A new project (username → PI/ADMIN/USER); its id, a UUID. Nothing is sent: it has no wallet yet."""
        project_id = str(uuid.uuid4())
        now = self.clock()
        self.projects[project_id] = Project(
            id=project_id,
            created_at=now,
            modified_at=now,
            specification=ProjectSpecification(parent=parent, title=title, can_consume_resources=can_consume_resources),
            status=ProjectStatus(
                members=self._members(members), personal_provider_project_for=personal_provider_project_for
            ),
        )
        return project_id

    async def set_members(self, project_id: str, members: Mapping[str, str]) -> None:
        """Replace the project's members; sessions get the project when it has a wallet here."""
        project = self._project(project_id)
        project.status.members = self._members(members)
        await self._project_changed(project)

    async def rename_project(self, project_id: str, title: str) -> None:
        """Retitle the project; sessions get it when it has a wallet here."""
        project = self._project(project_id)
        project.specification.title = title
        await self._project_changed(project)

    async def grant(self, owner: Workspace, category: str, quota: int) -> None:
        """Set the owner's allocation of ``category`` to ``quota`` (creating it): a significant update."""
        if quota not in _QUOTAS:
            raise ValueError(f"a quota is a non-negative int64, not {quota}")
        wallet = self._wallet(owner, category)
        wallet.quota = quota
        wallet.allocated = True
        self._reevaluate(wallet, significant=True)
        await self._notify_changed()

    async def set_locked(self, owner: Workspace, category: str, locked: bool | None) -> None:
        """Force the wallet's lock (a flip is sent as Core sends it); None: locked by usage again."""
        wallet = self._wallet(owner, category)
        wallet.lock_override = locked
        self._reevaluate(wallet, significant=False)
        await self._notify_changed()

    async def set_usage(self, owner: Workspace, category: str, usage: int) -> None:
        """Set the wallet's usage as another party could (a report made by hand, a restored database)."""
        wallet = self._wallet(owner, category)
        wallet.usage = usage
        self._reevaluate(wallet, significant=False)
        await self._notify_changed()

    async def disconnect_sessions(self) -> int:
        """Drop every notifications socket, authenticated or not (as a Core restart does); how many there were."""
        sessions = list(self._sessions)
        for session in sessions:
            session.drop()
        for session in sessions:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.finished.wait(), _DISCONNECT_WAIT_SECONDS)
        return len(sessions)

    # --- waiting (tests) ---

    async def wait_for_usage(
        self,
        owner: Workspace,
        category: str,
        predicate: Callable[[int], bool] = lambda usage: True,
        timeout: float = 5.0,  # noqa: ASYNC109 - a test helper's budget
    ) -> WalletView:
        """The wallet, once a report for it was accepted and its usage satisfies ``predicate``."""

        def satisfied() -> bool:
            reported = any(r.owner == owner and r.category == category for r in self.usage_reports)
            return reported and predicate(self.wallet(owner, category).usage)

        try:
            async with asyncio.timeout(timeout), self.changed:
                await self.changed.wait_for(satisfied)
        except TimeoutError:
            seen = [r.usage for r in self.usage_reports if r.owner == owner and r.category == category]
            raise TimeoutError(
                f"no matching usage for {owner} {category!r} within {timeout}s; "
                f"wallet {self.wallet(owner, category)}, reports {seen}"
            ) from None
        return self.wallet(owner, category)

    async def wait_for_auths(self, count: int, timeout: float = 5.0) -> list[StreamAuth]:  # noqa: ASYNC109
        """Every auth frame received, once there are at least ``count`` accepted ones."""

        def accepted() -> bool:
            return sum(auth.accepted for auth in self.auth_frames) >= count

        try:
            async with asyncio.timeout(timeout), self.changed:
                await self.changed.wait_for(accepted)
        except TimeoutError:
            raise TimeoutError(
                f"fewer than {count} accepted auth frames within {timeout}s: {self.auth_frames}"
            ) from None
        return list(self.auth_frames)

    # --- reportUsage ---

    async def report_usage(self, body: Any) -> list[bool]:
        """Apply a reportUsage body item by item; per item, whether the wallet is not locked.

        Raises UsageRefusedError: 400 (nothing applied) for a body Go would not write, else
        core2's refusal of the first bad item (the earlier items stay applied).
        """
        items = parse_report_usage(body)
        answers: list[bool] = []
        try:
            for item in items:
                answers.append(self._report(item))
        finally:
            await self._notify_changed()
        return answers

    def _report(self, item: ReportUsageRequest) -> bool:
        category_id = item.category_id_v2
        # In core2's order (accounting.go ReportUsage).
        if category_id.provider != self.provider_id:
            raise UsageRefusedError(403, "You cannot report usage for this product")
        category = self.categories().get(category_id.name)
        if category is None:
            raise UsageRefusedError(403, "This category does not exist")
        owner = self._owner(item)
        if owner is None:
            raise UsageRefusedError(403, "This user/project does not exist")
        if not item.is_delta_charge and item.usage < 0:
            raise UsageRefusedError(403, "Absolute usage cannot be negative")
        not_locked = True if category.free_to_use else self._charge(owner, category_id.name, item)
        self.usage_reports.append(
            UsageReport(
                received_at=time.time(),
                owner=owner,
                category=category_id.name,
                usage=item.usage,
                is_delta=item.is_delta_charge,
                scope=item.description.scope,
                description=item.description.description,
                not_locked=not_locked,
            )
        )
        return not_locked

    def _charge(self, owner: Workspace, category: str, item: ReportUsageRequest) -> bool:
        """core2's internalReportUsage, for a wallet allocated straight from the root."""
        wallet = self._wallet(owner, category)
        scope = item.description.scope
        current = wallet.usage if scope is None else self._scoped_usage.get((owner, scope), 0)
        delta = item.usage if item.is_delta_charge else item.usage - current
        if scope is not None:
            self._scoped_usage[(owner, scope)] = current + delta
        wallet.usage += delta
        self._reevaluate(wallet, significant=False)
        return not wallet.was_locked

    def _owner(self, item: ReportUsageRequest) -> Workspace | None:
        """The existing owner an item names, as core2's validateOwner checks it."""
        owner = item.owner
        if owner.type == "user":
            return Workspace.user(owner.username) if owner.username in self.users else None
        return Workspace.project(owner.project_id) if owner.project_id in self.projects else None

    # --- the notifications socket ---

    async def notifications(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/accounting/notifications``."""
        ws = web.WebSocketResponse()  # no heartbeat: core2 sends no pings
        await ws.prepare(request)
        # Known from the start, so that a socket waiting for its auth frame is dropped on shutdown too.
        session = _Session(ws, request)
        self._sessions.add(session)
        try:
            auth = await self._handshake(ws)
            if auth is None:
                session.drop()
                return ws
            session.authenticated = True
            session.include_retired = bool(auth.flags & FLAG_INCLUDE_RETIRED)
            session.queue(self._replay(auth.replay_from_ms))
            await self._notify_changed()
            writer = asyncio.create_task(session.write())
            try:
                await self._serve_requests(ws, session)
            finally:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
        finally:
            self._sessions.discard(session)
            session.finished.set()
            await self._notify_changed()
        return ws

    async def _handshake(self, ws: web.WebSocketResponse) -> Auth | None:
        """The first frame, if it is an auth frame with this provider's token (recorded either way)."""
        frame = _frame_bytes(await ws.receive())
        if frame is None:
            return None
        try:
            auth = decode_client_frame(frame)
        except StreamProtocolError:
            return None
        if not isinstance(auth, Auth):
            return None
        accepted = self._authenticate(auth.token)
        self.auth_frames.append(StreamAuth(time.time(), auth.replay_from_ms, auth.flags, accepted))
        await self._notify_changed()
        return auth if accepted else None

    async def _serve_requests(self, ws: web.WebSocketResponse, session: _Session) -> None:
        """Replay-user requests until the socket closes; anything else is ignored, as core2 does."""
        async for message in ws:
            if message.type == WSMsgType.ERROR:
                return
            frame = _frame_bytes(message)
            try:
                request = decode_client_frame(frame) if frame is not None else None
            except StreamProtocolError:
                continue
            if isinstance(request, ReplayUser):
                session.queue(self._replay_user(request.username))

    def _replay(self, since_ms: int) -> list[_Outgoing]:
        """On connect: wallets updated at or after the replay point, then projects changed after it."""
        items: list[_Outgoing] = [
            out for wallet in self._wallets.values() if wallet.last_update_ms >= since_ms and (out := self._out(wallet))
        ]
        items += [
            _ProjectOut(project.model_copy(deep=True))
            for project in self.projects.values()
            if project.modified_at > since_ms and self._has_wallet_here(project.id)
        ]
        return items

    def _replay_user(self, username: str) -> list[_Outgoing]:
        """Op 5: the user's projects with wallets here, then the user's and those projects' wallets."""
        if username not in self.users:
            return []
        projects = [
            project
            for project in self.projects.values()
            if any(member.username == username for member in project.status.members)
            and self._has_wallet_here(project.id)
        ]
        owners = {Workspace.user(username)} | {Workspace.project(project.id) for project in projects}
        items: list[_Outgoing] = [_ProjectOut(project.model_copy(deep=True)) for project in projects]
        items += [out for wallet in self._wallets.values() if wallet.owner in owners and (out := self._out(wallet))]
        return items

    # --- plumbing ---

    def _members(self, members: Mapping[str, str]) -> list[ProjectMember]:
        for username, role in members.items():
            if role not in _ROLES:
                raise ValueError(f"{username}: role {role!r} is not one of {sorted(_ROLES)}")
            self.users.add(username)
        return [ProjectMember.model_validate({"username": u, "role": r}) for u, r in members.items()]

    def _project(self, project_id: str) -> Project:
        project = self.projects.get(project_id)
        if project is None:
            raise KeyError(f"no project {project_id!r} (projects: {sorted(self.projects)})")
        return project

    def _wallet(self, owner: Workspace, category: str) -> _Wallet:
        """The wallet, created on first use as core2 does; the owner and category must exist."""
        if category not in self.categories():
            raise KeyError(f"{self.provider_id} registered no category {category!r}: {sorted(self.categories())}")
        if owner.kind == "project":
            self._project(owner.id)
        else:
            self.users.add(owner.id)
        key = (owner, category)
        if key not in self._wallets:
            self._wallets[key] = _Wallet(owner, category, last_update_ms=self.clock())
        return self._wallets[key]

    def _live_sessions(self) -> list[_Session]:
        return [session for session in self._sessions if session.authenticated]

    def _has_wallet_here(self, project_id: str) -> bool:
        owner = Workspace.project(project_id)
        return any(wallet.owner == owner and wallet.allocated for wallet in self._wallets.values())

    def _out(self, wallet: _Wallet, *, live: bool = False) -> _WalletOut | None:
        """The wallet as sent, or None: a wallet without allocation never is, nor one of a free-to-use category
        live. core2's replays (on connect, op 5) check only for an allocation: a granted free-to-use wallet
        comes then (seen against core2: a user's granted `storage` wallet)."""
        category = self.categories().get(wallet.category)
        if category is None or not wallet.allocated or (live and category.free_to_use):
            return None
        project = self.projects[wallet.owner.id] if wallet.owner.kind == "project" else None
        return _WalletOut(
            owner=wallet.owner,
            category=category,
            quota=wallet.quota,
            usage=wallet.usage,
            locked=wallet.locked,
            last_update_ms=wallet.last_update_ms,
            project=project.model_copy(deep=True) if project is not None else None,
        )

    def _reevaluate(self, wallet: _Wallet, *, significant: bool) -> None:
        """core2's lInternalReevaluate: a lock flip is significant; significant updates go to every session."""
        if wallet.locked != wallet.was_locked:
            wallet.was_locked = wallet.locked
            significant = True
        if not significant:
            return
        wallet.last_update_ms = self.clock()
        out = self._out(wallet, live=True)
        if out is not None:
            for session in self._live_sessions():
                session.queue([out])

    async def _project_changed(self, project: Project) -> None:
        project.modified_at = self.clock()
        if self._has_wallet_here(project.id):
            for session in self._live_sessions():
                session.queue([_ProjectOut(project.model_copy(deep=True))])
        await self._notify_changed()

    async def _notify_changed(self) -> None:
        async with self.changed:
            self.changed.notify_all()


# --- the reportUsage body -----------------------------------------------------


def _refuse(where: str, why: str) -> UsageRefusedError:
    return UsageRefusedError(400, f"Invalid request supplied: {where}: {why}")


def _require(mapping: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in mapping:
        raise _refuse(where, f"{key!r} is missing (Go writes every key)")
    value = mapping[key]
    # bool is an int in Python, not in Go.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise _refuse(f"{where}.{key}", f"{value!r} is not a {getattr(kind, '__name__', kind)}")
    return value


def _check_item(item: Any, where: str) -> None:
    if not isinstance(item, dict):
        raise _refuse(where, "not an object")
    _require(item, "isDeltaCharge", bool, where)
    usage = _require(item, "usage", int, where)
    if usage not in _INT64:
        raise _refuse(f"{where}.usage", f"{usage} does not fit an int64")
    owner = _require(item, "owner", dict, where)
    kind = _require(owner, "type", str, f"{where}.owner")
    username = _require(owner, "username", str, f"{where}.owner")
    project_id = _require(owner, "projectId", str, f"{where}.owner")
    if kind not in ("user", "project"):
        raise _refuse(f"{where}.owner.type", f"{kind!r} is neither 'user' nor 'project'")
    # core2 keys on projectId when it is set and checks the id the type names: both must agree.
    if (kind == "user" and project_id) or (kind == "project" and username):
        raise _refuse(f"{where}.owner", "the id the type does not use must be empty")
    category = _require(item, "categoryIdV2", dict, where)
    _require(category, "name", str, f"{where}.categoryIdV2")
    _require(category, "provider", str, f"{where}.categoryIdV2")
    description = item.get("description")
    if description is not None:
        if not isinstance(description, dict):
            raise _refuse(f"{where}.description", "not an object")
        for key in ("scope", "description"):
            if description.get(key) is not None and not isinstance(description[key], str):
                raise _refuse(f"{where}.description.{key}", f"{description[key]!r} is not a string or null")


def parse_report_usage(body: Any) -> list[ReportUsageRequest]:
    """The items of a reportUsage body, checked whole before any is applied (Go parses the body first)."""
    if not isinstance(body, dict):
        raise _refuse("body", "not an object")
    items = body.get("items")
    if items is None:
        return []  # BulkRequest omits an empty list
    if not isinstance(items, list):
        raise _refuse("items", "not a list")
    for index, item in enumerate(items):
        _check_item(item, f"items[{index}]")
    return [ReportUsageRequest.model_validate(item) for item in items]
