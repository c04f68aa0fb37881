"""What a step of a kopf handler came to, handed to kopf in one place.

The work of a handler is done by functions that *return* an ``Outcome`` (the status patch
functions of ``jobs``, plain status fields, the events to post, and the error that ends the
handler when it is not done) instead of writing to kopf's ``patch`` and raising themselves.
The handler applies it, so it reads top to bottom as what it decides, and a step is tested
by looking at what it returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import kopf

# What kopf's ``patch.fns`` take: a function that changes the raw object in place.
StatusFn = Callable[[kopf.RawBody], None]


@dataclass(frozen=True)
class Event:
    """A Kubernetes event about the object the handler runs for."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Outcome:
    """Status patch functions, plain status fields (a merge patch), events, and how the handler ends.

    ``error`` is ``kopf.TemporaryError`` ("not yet": kopf retries after its delay) or
    ``kopf.PermanentError`` ("never"); None when the handler is done.
    """

    fns: tuple[StatusFn, ...] = ()
    status: Mapping[str, Any] = field(default_factory=dict)
    events: tuple[Event, ...] = ()
    error: kopf.TemporaryError | kopf.PermanentError | None = None

    def apply(self, body: kopf.Body, patch: kopf.Patch) -> None:
        """Queue the patches, post the events, then raise ``error`` if there is one."""
        patch.fns.extend(self.fns)
        for name, value in self.status.items():
            patch.status[name] = value
        for event in self.events:
            kopf.event(body, type=event.type, reason=event.reason, message=event.message)
        if self.error is not None:
            raise self.error


def temporary(message: str, *, delay: float, cause: BaseException | None = None) -> kopf.TemporaryError:
    """ "Not yet": kopf runs the handler again after ``delay`` seconds; ``cause`` is what went wrong."""
    error = kopf.TemporaryError(message, delay=delay)
    if cause is not None:
        error.__cause__ = cause  # as `raise ... from cause` would
    return error


def permanent(message: str, *, cause: BaseException | None = None) -> kopf.PermanentError:
    """ "Never": kopf gives the handler up; ``cause`` is what went wrong."""
    error = kopf.PermanentError(message)
    if cause is not None:
        error.__cause__ = cause  # as `raise ... from cause` would
    return error
