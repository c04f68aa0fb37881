"""The Core stand-in's accounting: the notifications stream and reportUsage, as core2 serves them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from ucim.common.accounting_stream import (
    REPLAY_EVERYTHING_MS,
    CategoryRecord,
    ProjectRecord,
    ProjectUpdated,
    StreamEvent,
    StreamSession,
    UserRecord,
    WalletRecord,
    WalletUpdated,
    Workspace,
    auth_frame,
    decode,
    replay_user_frame,
)
from ucim.common.products import STORAGE_PRODUCTS
from ucim.common.protocol import ProductReference, ProductV2
from ucim.testing import CoreStandIn
from ucim.testing.core_accounting import NOTIFICATIONS_PATH, REPORT_USAGE_PATH, WalletView
from ucim.testing.core_standin import compute_product

PROVIDER = "hippo"
REFRESH_TOKEN = "refresh-0123456789"
DONNA = "Donna#1234"
BO = "Bo#0001"


class Clock:
    """Core's clock in ms, moved by the test."""

    def __init__(self, now: int = 1_767_225_600_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def products(provider: str = PROVIDER) -> list[ProductV2]:
    cpu = compute_product(ProductReference(id="cpu-1", category="cpu", provider=provider))
    gpu = compute_product(ProductReference(id="gpu-1", category="gpu", provider=provider))
    return [cpu, gpu, *(storage.product(provider) for storage in STORAGE_PRODUCTS)]  # storage is free to use


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def core(clock: Clock) -> CoreStandIn:
    core = CoreStandIn(PROVIDER, REFRESH_TOKEN)
    core.record.products.extend(products())
    core.accounting.clock = clock
    return core


@pytest.fixture
async def client(core: CoreStandIn, aiohttp_client: AiohttpClient) -> TestClient[Any, Any]:
    return await aiohttp_client(core.app())


class Listener:
    """A provider's end of the notifications socket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.session = StreamSession()

    async def frame(self, wait: float = 2.0) -> bytes:
        message = await self.ws.receive(timeout=wait)
        assert message.type == WSMsgType.BINARY, f"expected a binary frame, got {message}"
        data: bytes = message.data
        return data

    async def events(self, wait: float = 2.0) -> list[StreamEvent]:
        return self.session.feed(await self.frame(wait))

    async def events_until_quiet(self, quiet: float = 0.25) -> list[StreamEvent]:
        """Every event of every frame until none comes for ``quiet`` seconds."""
        events: list[StreamEvent] = []
        while True:
            try:
                events += await self.events(wait=quiet)
            except TimeoutError:
                return events

    async def nothing(self, wait: float = 0.1) -> None:
        with pytest.raises(TimeoutError):
            message = await self.ws.receive(timeout=wait)
            pytest.fail(f"expected nothing, got {message}")


async def listen(client: TestClient[Any, Any], core: CoreStandIn, replay_from: int = REPLAY_EVERYTHING_MS) -> Listener:
    ws = await client.ws_connect(NOTIFICATIONS_PATH)
    await ws.send_bytes(auth_frame(replay_from, core.mint_provider_token()))
    return Listener(ws)


def wallets(events: list[StreamEvent]) -> list[WalletUpdated]:
    return [event for event in events if isinstance(event, WalletUpdated)]


def projects(events: list[StreamEvent]) -> list[ProjectUpdated]:
    return [event for event in events if isinstance(event, ProjectUpdated)]


def item(owner: Workspace, usage: int, *, category: str = "cpu", delta: bool = False, **extra: Any) -> dict[str, Any]:
    """A reportUsage item as IM2 writes it."""
    return {
        "isDeltaCharge": delta,
        "owner": {
            "type": owner.kind,
            "username": owner.id if owner.kind == "user" else "",
            "projectId": owner.id if owner.kind == "project" else "",
        },
        "categoryIdV2": {"name": category, "provider": extra.pop("provider", PROVIDER)},
        "usage": usage,
        "description": {"scope": extra.pop("scope", None), "description": None},
    } | extra


async def report(client: TestClient[Any, Any], core: CoreStandIn, *items: dict[str, Any]) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {core.mint_provider_token()}"}
    response = await client.post(REPORT_USAGE_PATH, json={"items": list(items)}, headers=headers)
    return response.status, await response.json()


# --- the handshake ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("first_frame", "recorded"),
    [
        (lambda core: auth_frame(0, "not-a-token"), True),
        (lambda core: auth_frame(0, core.mint_service_token()), True),  # Core's, but not a provider's
        (lambda core: auth_frame(0, core.mint_provider_token(expires_in=-1)), True),
        (lambda core: auth_frame(0, CoreStandIn(PROVIDER, REFRESH_TOKEN).mint_provider_token()), True),
        (lambda core: replay_user_frame(DONNA), False),
        (lambda core: auth_frame(0, core.mint_provider_token())[:-3], False),
        (lambda core: b"", False),
    ],
    ids=["garbage", "service token", "expired", "another Core", "op 5 first", "truncated", "empty"],
)
async def test_a_bad_first_frame_drops_the_socket_without_a_word(
    core: CoreStandIn, client: TestClient[Any, Any], first_frame: Callable[[CoreStandIn], bytes], recorded: bool
) -> None:
    await core.accounting.grant(Workspace.user(DONNA), "cpu", 10)
    ws = await client.ws_connect(NOTIFICATIONS_PATH)

    await ws.send_bytes(first_frame(core))
    message = await ws.receive(timeout=2)

    # No error frame and not even a close frame: the connection just ends (1006).
    assert message.type == WSMsgType.CLOSED
    assert ws.close_code == 1006
    assert core.accounting.open_sessions == 0
    assert [(a.replay_from_ms, a.accepted) for a in core.accounting.auth_frames] == ([(0, False)] if recorded else [])


async def test_an_auth_frame_sent_as_text_is_accepted(core: CoreStandIn, client: TestClient[Any, Any]) -> None:
    await core.accounting.grant(Workspace.user(DONNA), "cpu", 10)
    ws = await client.ws_connect(NOTIFICATIONS_PATH)

    await ws.send_str(auth_frame(0, core.mint_provider_token()).decode())  # IM2 sends it as text

    [event] = wallets(await Listener(ws).events())
    assert event.owner == Workspace.user(DONNA)
    assert core.accounting.open_sessions == 1


@pytest.mark.parametrize("name", ["line\nbreak", "$(reboot); `id` | tee /etc/x", "Ærø 🚀", "x" * 10_000])
async def test_hostile_names_arrive_as_they_are(core: CoreStandIn, client: TestClient[Any, Any], name: str) -> None:
    project_id = core.accounting.create_project(name, {name: "PI"})
    await core.accounting.grant(Workspace.user(name), "cpu", 1)
    await core.accounting.grant(Workspace.project(project_id), "cpu", 1)

    events = await (await listen(client, core)).events_until_quiet()

    assert Workspace.user(name) in {w.owner for w in wallets(events)}
    [project] = {event.project.id: event.project for event in projects(events)}.values()
    assert project.specification.title == name
    assert project.status.members[0].username == name


# --- replay -----------------------------------------------------------------------


async def test_go_zero_time_replays_every_wallet_with_an_allocation(
    core: CoreStandIn, client: TestClient[Any, Any]
) -> None:
    accounting = core.accounting
    project_id = accounting.create_project("Sun", {DONNA: "PI", BO: "USER"})
    accounting.create_project("No wallet here", {DONNA: "PI"})
    await accounting.grant(Workspace.project(project_id), "cpu", 1000)
    await accounting.grant(Workspace.user(DONNA), "gpu", 10)
    await accounting.grant(Workspace.user(BO), "storage", 50)  # free to use: replayed, as core2 does
    status, _ = await report(client, core, item(Workspace.user(BO), 5))  # a wallet, but no allocation
    assert status == 200

    listener = await listen(client, core)
    first = await listener.frame()
    events = listener.session.feed(first) + await listener.events_until_quiet()

    # Users, then projects, then categories, then wallets; each ref before its first use.
    assert [type(record) for record in decode(first)] == [ProjectRecord, CategoryRecord, WalletRecord]
    assert {(w.owner, w.category.name, w.quota, w.usage, w.locked) for w in wallets(events)} == {
        (Workspace.project(project_id), "cpu", 1000, 0, False),
        (Workspace.user(DONNA), "gpu", 10, 0, False),
        (Workspace.user(BO), "storage", 50, 0, False),
    }
    assert {event.project.id for event in projects(events)} == {project_id}
    [project_wallet] = [w for w in wallets(events) if w.owner.kind == "project"]
    assert project_wallet.project is not None
    assert [(m.username, m.role) for m in project_wallet.project.status.members] == [(DONNA, "PI"), (BO, "USER")]
    assert project_wallet.category.accounting_frequency == "PERIODIC_MINUTE"
    assert core.accounting.auth_frames[0].replay_from_ms == REPLAY_EVERYTHING_MS


async def test_the_replay_point_selects_wallets_at_or_after_it_and_projects_after_it(
    core: CoreStandIn, client: TestClient[Any, Any], clock: Clock
) -> None:
    accounting = core.accounting
    clock.now = 1000
    project_id = accounting.create_project("Sun", {DONNA: "PI"})
    await accounting.grant(Workspace.project(project_id), "cpu", 100)
    clock.now = 2000
    await accounting.grant(Workspace.user(DONNA), "cpu", 10)

    at_2000 = await (await listen(client, core, replay_from=2000)).events_until_quiet()
    at_999 = await (await listen(client, core, replay_from=999)).events_until_quiet()
    at_1000 = await (await listen(client, core, replay_from=1000)).events_until_quiet()
    after = await listen(client, core, replay_from=2001)

    assert [w.owner for w in wallets(at_2000)] == [Workspace.user(DONNA)]
    assert projects(at_2000) == []
    # The project wallet brings its project along; the project, changed after 999, comes once more.
    assert [type(event) for event in at_999] == [ProjectUpdated, WalletUpdated, WalletUpdated, ProjectUpdated]
    assert [type(event) for event in at_1000] == [ProjectUpdated, WalletUpdated, WalletUpdated]
    await after.nothing()
    assert [a.replay_from_ms for a in await accounting.wait_for_auths(4)] == [2000, 999, 1000, 2001]


async def test_refs_count_from_zero_on_every_connection(core: CoreStandIn, client: TestClient[Any, Any]) -> None:
    await core.accounting.grant(Workspace.user(DONNA), "cpu", 10)
    await core.accounting.grant(Workspace.user(BO), "gpu", 10)

    first = decode(await (await listen(client, core)).frame())
    second_listener = await listen(client, core)
    second = [decode(await second_listener.frame()), decode(await second_listener.frame())]

    assert first[0] == UserRecord(0, DONNA)
    assert second[0][0] == UserRecord(0, DONNA)
    assert second[1][0] == UserRecord(1, BO)
    assert isinstance(second[1][1], CategoryRecord) and second[1][1].ref == 1


# --- live -------------------------------------------------------------------------


async def test_allocation_and_lock_changes_reach_every_open_session(
    core: CoreStandIn, client: TestClient[Any, Any], clock: Clock
) -> None:
    accounting = core.accounting
    donna = Workspace.user(DONNA)
    listeners = [await listen(client, core), await listen(client, core)]
    await accounting.wait_for_auths(2)

    clock.now += 1
    await accounting.grant(donna, "cpu", 10)
    clock.now += 1
    await accounting.set_locked(donna, "cpu", True)
    await accounting.set_locked(donna, "cpu", True)  # no flip: not significant
    clock.now += 1
    await accounting.set_locked(donna, "cpu", None)  # usage 0 < quota 10: unlocked again
    clock.now += 1
    await accounting.grant(donna, "cpu", 20)

    for listener in listeners:
        events = wallets(await listener.events_until_quiet())
        assert [(w.quota, w.locked, w.last_update_ms - clock.now) for w in events] == [
            (10, False, -3),
            (10, True, -2),
            (10, False, -1),
            (20, False, 0),
        ]
    assert accounting.wallet(donna, "cpu") == WalletView(quota=20, usage=0, locked=False)


async def test_free_categories_and_unknown_owners_are_not_granted_silently(
    core: CoreStandIn, client: TestClient[Any, Any]
) -> None:
    listener = await listen(client, core)
    await core.accounting.wait_for_auths(1)

    await core.accounting.grant(Workspace.user(DONNA), "storage", 10)
    with pytest.raises(KeyError, match="no category 'fpga'"):
        await core.accounting.grant(Workspace.user(DONNA), "fpga", 10)
    with pytest.raises(KeyError, match="no project"):
        await core.accounting.grant(Workspace.project("4f6a0e8e-0000-4000-8000-000000000000"), "cpu", 10)

    await listener.nothing()


async def test_project_changes_go_out_under_the_same_ref_once_it_has_a_wallet(
    core: CoreStandIn, client: TestClient[Any, Any], clock: Clock
) -> None:
    accounting = core.accounting
    project_id = accounting.create_project("Sun", {DONNA: "PI"})
    listener = await listen(client, core)
    await accounting.wait_for_auths(1)

    await accounting.rename_project(project_id, "Moon")  # no wallet here yet: nothing
    await listener.nothing()
    await accounting.grant(Workspace.project(project_id), "cpu", 100)
    granted = decode(await listener.frame())
    clock.now += 5
    await accounting.set_members(project_id, {DONNA: "PI", BO: "ADMIN"})
    changed = decode(await listener.frame())

    assert [type(record) for record in granted] == [ProjectRecord, CategoryRecord, WalletRecord]
    [record] = changed
    assert isinstance(record, ProjectRecord) and record.ref == 0
    assert record.modified_at_ms == clock.now == record.project.modified_at
    assert record.project.specification.title == "Moon"
    assert [(m.username, m.role) for m in record.project.status.members] == [(DONNA, "PI"), (BO, "ADMIN")]
    with pytest.raises(ValueError, match="role 'OWNER'"):
        await accounting.set_members(project_id, {DONNA: "OWNER"})


async def test_replay_user_sends_the_users_wallets_and_projects(
    core: CoreStandIn, client: TestClient[Any, Any], clock: Clock
) -> None:
    accounting = core.accounting
    clock.now = 1000
    project_id = accounting.create_project("Sun", {DONNA: "USER", BO: "PI"})
    accounting.create_project("Empty", {DONNA: "PI"})
    await accounting.grant(Workspace.project(project_id), "cpu", 100)
    await accounting.grant(Workspace.user(DONNA), "gpu", 7)
    await accounting.grant(Workspace.user(BO), "gpu", 9)
    clock.now = 5000
    listener = await listen(client, core, replay_from=5000)  # nothing to replay
    await listener.nothing()

    await listener.ws.send_bytes(replay_user_frame(DONNA))
    events = await listener.events_until_quiet()
    await listener.ws.send_bytes(replay_user_frame("Nobody#0"))
    await listener.ws.send_bytes(b"\x09garbage")  # other opcodes are ignored
    await listener.nothing()

    assert [event.project.id for event in projects(events)] == [project_id]
    assert {(w.owner, w.category.name, w.quota) for w in wallets(events)} == {
        (Workspace.user(DONNA), "gpu", 7),
        (Workspace.project(project_id), "cpu", 100),
    }
    assert core.accounting.open_sessions == 1


async def test_disconnected_sessions_reconnect_with_their_replay_point(
    core: CoreStandIn, client: TestClient[Any, Any]
) -> None:
    await core.accounting.grant(Workspace.user(DONNA), "cpu", 10)
    listener = await listen(client, core)
    await listener.events()

    assert await core.accounting.disconnect_sessions() == 1
    assert (await listener.ws.receive(timeout=2)).type == WSMsgType.CLOSED
    assert core.accounting.open_sessions == 0
    again = await listen(client, core, replay_from=123)
    await again.events()

    assert core.accounting.open_sessions == 1
    assert [a.replay_from_ms for a in core.accounting.auth_frames] == [REPLAY_EVERYTHING_MS, 123]


async def test_going_offline_drops_the_stream_and_stopping_does_not_wait_for_it() -> None:
    async with CoreStandIn(PROVIDER, REFRESH_TOKEN) as core, aiohttp.ClientSession() as http:
        url = await core.start()
        ws = await http.ws_connect(url + NOTIFICATIONS_PATH)
        await ws.send_bytes(auth_frame(0, core.mint_provider_token()))
        await core.accounting.wait_for_auths(1)

        await core.go_offline()
        assert (await ws.receive(timeout=2)).type == WSMsgType.CLOSED
        with pytest.raises(aiohttp.ClientError):
            await http.ws_connect(url + NOTIFICATIONS_PATH)
        await core.go_online()
        ws = await http.ws_connect(url + NOTIFICATIONS_PATH)
        await ws.send_bytes(auth_frame(0, core.mint_provider_token()))
        await core.accounting.wait_for_auths(2)

        waiting = await http.ws_connect(url + NOTIFICATIONS_PATH)  # no auth frame yet

        await asyncio.wait_for(core.stop(), timeout=2)
        for socket in (ws, waiting):
            assert (await socket.receive(timeout=2)).type in (WSMsgType.CLOSE, WSMsgType.CLOSED)


# --- reportUsage ------------------------------------------------------------------


async def test_absolute_reports_replace_and_delta_reports_add(core: CoreStandIn, client: TestClient[Any, Any]) -> None:
    donna = Workspace.user(DONNA)
    await core.accounting.grant(donna, "cpu", 100)

    assert await report(client, core, item(donna, 30)) == (200, {"responses": [True]})
    assert await report(client, core, item(donna, 20)) == (200, {"responses": [True]})
    assert await report(client, core, item(donna, 5, delta=True), item(donna, -2, delta=True)) == (
        200,
        {"responses": [True, True]},
    )

    assert core.accounting.wallet(donna, "cpu") == WalletView(100, 23, False)
    assert [(r.usage, r.is_delta) for r in core.accounting.usage_reports] == [
        (30, False),
        (20, False),
        (5, True),
        (-2, True),
    ]


async def test_scopes_keep_their_own_share_of_the_usage(core: CoreStandIn, client: TestClient[Any, Any]) -> None:
    project_id = core.accounting.create_project("Sun", {DONNA: "PI"})
    owner = Workspace.project(project_id)
    await core.accounting.grant(owner, "cpu", 1000)

    await report(client, core, item(owner, 37, scope="hippo-storage-home"), item(owner, 10, scope="hippo-storage-work"))
    await report(client, core, item(owner, 40, scope="hippo-storage-home"))
    assert core.accounting.wallet(owner, "cpu").usage == 50
    # Without a scope an absolute report replaces the wallet's whole local usage, as core2 does.
    await report(client, core, item(owner, 7))

    assert core.accounting.wallet(owner, "cpu").usage == 7
    assert [r.scope for r in core.accounting.usage_reports] == [
        "hippo-storage-home",
        "hippo-storage-work",
        "hippo-storage-home",
        None,
    ]


async def test_reaching_the_quota_locks_the_wallet_and_tells_the_sessions(
    core: CoreStandIn, client: TestClient[Any, Any]
) -> None:
    donna = Workspace.user(DONNA)
    await core.accounting.grant(donna, "cpu", 100)
    listener = await listen(client, core)
    await listener.events()

    assert await report(client, core, item(donna, 99)) == (200, {"responses": [True]})
    await listener.nothing()  # usage alone is not significant
    assert await report(client, core, item(donna, 100), item(donna, 120)) == (200, {"responses": [False, False]})
    [locked] = wallets(await listener.events())
    assert await report(client, core, item(donna, 10)) == (200, {"responses": [True]})
    [unlocked] = wallets(await listener.events())

    assert (locked.usage, locked.locked) == (100, True)
    assert (unlocked.usage, unlocked.locked) == (10, False)
    await listener.nothing()


async def test_a_free_category_answers_true_and_keeps_nothing(core: CoreStandIn, client: TestClient[Any, Any]) -> None:
    donna = Workspace.user(DONNA)
    core.accounting.add_user(DONNA)

    assert await report(client, core, item(donna, 10**9, category="storage")) == (200, {"responses": [True]})
    assert core.accounting.wallet(donna, "storage") == WalletView(0, 0, True)


async def test_an_empty_report_is_answered_with_an_empty_object(
    core: CoreStandIn, client: TestClient[Any, Any]
) -> None:
    assert await report(client, core) == (200, {})


@pytest.mark.parametrize(
    ("bad", "status", "why"),
    [
        (item(Workspace.user(DONNA), -1), 403, "Absolute usage cannot be negative"),
        (item(Workspace.user(DONNA), 1, provider="other"), 403, "You cannot report usage for this product"),
        (item(Workspace.user(DONNA), 1, category="fpga"), 403, "This category does not exist"),
        (item(Workspace.user("Nobody#0"), 1), 403, "This user/project does not exist"),
        (item(Workspace.project("4f6a0e8e-0000-4000-8000-000000000000"), 1), 403, "This user/project does not exist"),
    ],
)
async def test_the_first_refused_item_fails_the_call_and_earlier_ones_stay(
    core: CoreStandIn, client: TestClient[Any, Any], bad: dict[str, Any], status: int, why: str
) -> None:
    donna = Workspace.user(DONNA)
    await core.accounting.grant(donna, "cpu", 100)

    answer = await report(client, core, item(donna, 7), bad, item(donna, 9))

    assert answer == (status, {"statusCode": status, "why": why, "errorCode": "", "detailedCode": 0})
    assert core.accounting.wallet(donna, "cpu").usage == 7
    assert [r.usage for r in core.accounting.usage_reports] == [7]


def _without(key: str, inner: str | None = None) -> dict[str, Any]:
    body = item(Workspace.user(DONNA), 1)
    del (body if inner is None else body[key])[inner or key]
    return body


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        (_without("isDeltaCharge"), "'isDeltaCharge' is missing"),
        (_without("usage"), "'usage' is missing"),
        (_without("owner", "projectId"), "items[1].owner: 'projectId' is missing"),
        (_without("categoryIdV2", "provider"), "'provider' is missing"),
        (item(Workspace.user(DONNA), 1) | {"usage": 1.0}, "usage: 1.0 is not a int"),
        (item(Workspace.user(DONNA), 1) | {"usage": "1"}, "usage: '1' is not a int"),
        (item(Workspace.user(DONNA), 1) | {"usage": True}, "usage: True is not a int"),
        (item(Workspace.user(DONNA), 1) | {"usage": 2**63}, "does not fit an int64"),
        (item(Workspace.user(DONNA), 1) | {"isDeltaCharge": 0}, "isDeltaCharge: 0 is not a bool"),
        (item(Workspace.user(DONNA), 1) | {"owner": {"type": "USER", "username": DONNA, "projectId": ""}}, "type"),
        (item(Workspace.user(DONNA), 1) | {"owner": {"type": "user", "username": DONNA, "projectId": "p"}}, "empty"),
        (item(Workspace.user(DONNA), 1) | {"description": {"scope": 5}}, "scope"),
    ],
)
async def test_a_body_go_would_not_write_is_refused_whole(
    core: CoreStandIn, client: TestClient[Any, Any], bad: dict[str, Any], where: str
) -> None:
    donna = Workspace.user(DONNA)
    await core.accounting.grant(donna, "cpu", 100)

    status, body = await report(client, core, item(donna, 7), bad)

    assert status == 400
    assert body["why"].startswith("Invalid request supplied: items[1]")
    assert where in body["why"]
    assert core.accounting.wallet(donna, "cpu").usage == 0
    assert core.accounting.usage_reports == []


@pytest.mark.parametrize(
    ("token", "status"),
    [(None, 401), ("service", 403), ("expired", 401)],
)
async def test_reports_need_this_providers_access_token(
    core: CoreStandIn, client: TestClient[Any, Any], token: str | None, status: int
) -> None:
    tokens = {"service": core.mint_service_token(), "expired": core.mint_provider_token(expires_in=-1)}
    headers = {"Authorization": f"Bearer {tokens[token]}"} if token else {}

    response = await client.post(REPORT_USAGE_PATH, json={"items": [item(Workspace.user(DONNA), 1)]}, headers=headers)

    assert response.status == status
    assert core.accounting.usage_reports == []


async def test_waiting_for_usage_returns_once_a_report_satisfies_it(
    core: CoreStandIn, client: TestClient[Any, Any]
) -> None:
    donna = Workspace.user(DONNA)
    await core.accounting.grant(donna, "cpu", 100)
    waiter = asyncio.create_task(core.accounting.wait_for_usage(donna, "cpu", lambda usage: usage >= 40, timeout=2))

    await report(client, core, item(donna, 30))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await report(client, core, item(donna, 45))

    assert await waiter == WalletView(100, 45, False)
    with pytest.raises(TimeoutError, match=r"reports \[30, 45\]"):
        await core.accounting.wait_for_usage(donna, "cpu", lambda usage: usage > 100, timeout=0.05)
    assert core.accounting.usage_reports[0].received_at <= core.accounting.usage_reports[1].received_at


async def test_provider_gifts_are_not_served(core: CoreStandIn, client: TestClient[Any, Any]) -> None:
    headers = {"Authorization": f"Bearer {core.mint_provider_token()}"}
    gift = {
        "ownerUsername": DONNA,
        "category": {"name": "storage", "provider": PROVIDER},
        "quota": 1,
        "expiresAt": None,
    }

    response = await client.post("/api/accounting/v2/registerProviderGift", json={"items": [gift]}, headers=headers)

    assert response.status == 404
