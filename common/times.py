"""Time helpers every component shares: UTC now, RFC 3339 text and UCloud's epoch milliseconds.

Kubernetes writes times as RFC 3339 in UTC with a ``Z``; UCloud's wire format is integer
epoch milliseconds (``ucim.common.protocol.Timestamp``). One spelling of each, here.
"""

from __future__ import annotations

from datetime import UTC, datetime


def now_utc() -> datetime:
    return datetime.now(UTC)


def millis(moment: datetime) -> int:
    """A datetime as UCloud's integer epoch milliseconds."""
    return int(moment.timestamp() * 1000)


def rfc3339(moment: datetime, *, fraction: bool = False) -> str:
    """``2026-03-01T12:00:00Z``; with ``fraction``, milliseconds too (``…12:00:00.123Z``).

    Whole seconds are what Kubernetes itself writes; a value that must change from one
    call to the next (the requested-at annotation) carries milliseconds.
    """
    moment = moment.astimezone(UTC)
    if fraction:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(moment: datetime) -> str:
    """Kubernetes' MicroTime (a Lease's renewTime): RFC 3339 with exactly six fractional digits."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339(text: str | None) -> datetime | None:
    """An aware datetime from RFC 3339 text; None for no text or text that is not a time."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def minutes_text(minutes: int) -> str:
    """A time limit for people: ``90`` → ``1 h 30 min``, ``2880`` → ``48 h``, ``5`` → ``5 min``."""
    hours, rest = divmod(minutes, 60)
    if not hours:
        return f"{rest} min"
    return f"{hours} h {rest} min" if rest else f"{hours} h"
