"""A connection that expires, end to end: Core is told once, the instance stops, init refuses, connect renews.

The gateway gives each connection a short life (``UCIM_GATEWAY_CONNECTION_EXPIRE_AFTER_MS``);
when it passes, the operator sends Core's stand-in ``clearConnection`` and the bridge stops the
user's instance; Core's next ``init`` for the user is refused, not answered by connecting them
again; the user's Connect (``integration/connect``) gives a new expiry. What ucim holds is read as
a person would, with kubectl.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from ucim.common import reasons
from ucim.common.conditions import find_condition
from ucim.common.resources import UserConnection, UserInstance
from ucim.testing.stack import CLUSTER, Stack

# A connection lives 4 s (a little less: expiresAt is written in whole seconds).
LIFETIME_MS = 4000
SHORT_LIFE = {"ucim-gateway": {"UCIM_GATEWAY_CONNECTION_EXPIRE_AFTER_MS": str(LIFETIME_MS)}}
pytestmark = [pytest.mark.e2e, pytest.mark.local_platform, pytest.mark.stack_settings(SHORT_LIFE)]

WAIT = 20.0
USER = "alice"
EXPIRED_WHY = "Your connection to this provider expired; connect again in UCloud"


def connection(stack: Stack) -> UserConnection:
    return UserConnection.model_validate(stack.get(f"uconn/{UserConnection.name_for(USER, CLUSTER)}"))


def instance_exists(stack: Stack) -> bool:
    name = UserInstance.name_for(USER, CLUSTER)
    return stack.kubectl("get", "ui", name, "-n", stack.namespace, check=False).returncode == 0


async def until(what: str, check: Callable[[], Any]) -> None:
    """Once ``check`` holds (read with kubectl, as a person would); an AssertionError after WAIT seconds."""
    try:
        async with asyncio.timeout(WAIT):
            while True:
                if check():
                    return
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"not within {WAIT} s: {what}") from None


async def init(stack: Stack) -> tuple[int, Any]:
    answer = await stack.core.call_provider("POST", "integration/init", {"username": USER})
    return answer.status, answer.body


async def test_an_expired_connection_is_cleared_at_core_once_and_not_renewed_until_the_user_connects(
    stack: Stack,
) -> None:
    core = stack.core
    assert (await core.retrieve_manifest()).expire_after_ms == LIFETIME_MS
    await core.connect(USER)
    assert (await init(stack))[0] == 200
    first = connection(stack).spec.expires_at
    assert first is not None and first > datetime.now(UTC)
    assert instance_exists(stack)

    # The expiry passes: Core hears it once, the bridge stops the instance, the operator records it.
    await core.record.wait_for_cleared(USER, WAIT)
    await until("the instance stopped", lambda: not instance_exists(stack))
    await until("the clear recorded", lambda: connection(stack).status.cleared is not None)
    cleared = connection(stack).status.cleared
    assert cleared is not None and (cleared.expires_at, cleared.reason) == (first, reasons.EXPIRED)

    # Core calls init (and a call for the user, which meets no instance, makes it do so): refused, not renewed.
    status, body = await init(stack)
    assert (status, body["why"]) == (403, EXPIRED_WHY)
    calls_before = len(core.record.provider_calls)
    browse = await core.files_browse_call(USER, f"/{core.home_of(USER).id}")
    assert browse.status == 449  # no instance, and none started
    inits = [c.status for c in core.record.provider_calls[calls_before:] if c.path == "integration/init"]
    assert inits and set(inits) == {403}  # Core's init was refused each time
    assert not instance_exists(stack)
    still = connection(stack)
    assert still.spec.expires_at == first
    connected = find_condition(still.status.conditions, reasons.CONNECTED)
    assert connected is not None and connected.reason == reasons.CONNECTION_APPROVED
    await asyncio.sleep(1.0)
    assert core.record.cleared_connections == [USER]  # once

    # The user clicks Connect in UCloud: a new expiry, and everything works again.
    await core.connect(USER)
    renewed = connection(stack).spec.expires_at
    assert renewed is not None and renewed > first
    assert (await init(stack))[0] == 200
    assert instance_exists(stack)
    # ... until that expiry passes in turn: Core hears of this end too.
    await until("cleared again", lambda: core.record.cleared_connections == [USER, USER])
    await until("recorded again", lambda: (c := connection(stack).status.cleared) and c.expires_at == renewed)


async def test_an_expiry_that_passes_while_the_operator_is_down_is_cleared_once_it_is_back(stack: Stack) -> None:
    core = stack.core
    await core.connect(USER)
    ends = connection(stack).spec.expires_at
    assert ends is not None
    await stack.kill("ucim-operator")
    await until("expired", lambda: datetime.now(UTC) > ends)
    await asyncio.sleep(0.5)
    assert core.record.cleared_connections == []

    await stack.start("ucim-operator")
    await core.record.wait_for_cleared(USER, WAIT)
    await until("the clear recorded", lambda: connection(stack).status.cleared is not None)
    # Started again: the recorded clear is not sent twice.
    await stack.kill("ucim-operator")
    await stack.start("ucim-operator")
    await asyncio.sleep(2.0)
    assert core.record.cleared_connections == [USER]
