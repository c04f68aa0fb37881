"""Request ids: one per call that acts as a user, so the gateway's log and the audit trail can be joined.

The gateway gives every request an id (``X-Request-Id``, answered to the caller as well), keeps it in
:data:`CURRENT` for the request's task, and sends it with every call it makes to the user's instance;
the operator does the same for its submit and cancel calls. The instance writes it into each audit
record (``ucim.user_sidecar.audit``), and the log filter below adds it to every log line written while
the request runs.
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar
from typing import Final

HEADER: Final = "X-Request-Id"
# What an id may look like when it comes from elsewhere: short, printable, no spaces (it ends up in logs).
PATTERN: Final = r"^[A-Za-z0-9._:-]{1,128}$"
_VALID = re.compile(PATTERN)

CURRENT: ContextVar[str | None] = ContextVar("ucim_request_id", default=None)


def new_request_id() -> str:
    return uuid.uuid4().hex


def valid_request_id(text: str | None) -> str | None:
    """``text`` if it is a well-formed request id, else None (a caller's header is never trusted as is)."""
    return text if text is not None and _VALID.match(text) else None


def request_id_headers() -> dict[str, str]:
    """The header that carries the current request's id to the next hop; empty outside a request."""
    current = CURRENT.get()
    return {HEADER: current} if current is not None else {}


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every record logged while a request with an id runs (a field of the JSON line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = CURRENT.get()
        if current is not None and not hasattr(record, "request_id"):
            record.request_id = current
        return True
