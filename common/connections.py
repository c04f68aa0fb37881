"""When a UserConnection has ended, and why: the one reading the gateway, the operator and the bridge share.

A connection ends when the user unlinks (the gateway's ``Connected=False Unlinked``) or when
its ``spec.expiresAt`` passes. A connection that was never connected (no Connected condition
and no expiry: created by a connect whose mapping is still pending, or was refused) has not
ended: it has not begun.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from ucim.common import reasons
from ucim.common.conditions import find_condition
from ucim.common.resources import UserConnection

EndReason = Literal["Unlinked", "Expired"]


def end_reason(connection: UserConnection, now: datetime) -> EndReason | None:
    """Why the connection has ended by ``now`` (the user unlinked, or it expired); None while it has not."""
    connected = find_condition(connection.status.conditions, reasons.CONNECTED)
    if connected is not None and connected.status == "False":
        return reasons.UNLINKED
    if connection.spec.expires_at is not None and connection.spec.expires_at <= now:
        return reasons.EXPIRED
    return None


def has_ended(connection: UserConnection, now: datetime) -> bool:
    """The user unlinked (Connected=False), or the connection's expiry has passed.

    A connection still waiting to be approved (no Connected condition) has not ended.
    """
    return end_reason(connection, now) is not None
