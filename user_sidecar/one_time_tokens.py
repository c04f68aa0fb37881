"""One-time tokens: what a session will do, handed out once to whoever presents its token before it expires.

The instance makes them for Core's sessions (a shell's command, a web interface's target); a
token is this instance's, so it only ever opens something of this user.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

T = TypeVar("T")

TOKEN_SECONDS: Final = 60.0  # Core hands the session to the browser, which uses it at once
MAX_PENDING: Final = 1000  # tokens made and not yet used: a bound on what a caller can pile up


@dataclass(frozen=True)
class _Pending(Generic[T]):
    value: T
    expires: float


class OneTimeTokens(Generic[T]):
    """Tokens made and not yet used; ``claim`` hands a value out once, before it expires."""

    def __init__(
        self, token_bytes: int, seconds: float = TOKEN_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._token_bytes = token_bytes
        self._seconds = seconds
        self._clock = clock
        self._pending: dict[str, _Pending[T]] = {}

    def make(self, value: T) -> str:
        self._forget_expired()
        while len(self._pending) >= MAX_PENDING:
            del self._pending[next(iter(self._pending))]  # the oldest
        token = f"{time.time_ns()}{secrets.token_hex(self._token_bytes)}"  # IM2's RandomToken(n) shape
        self._pending[token] = _Pending(value, self._clock() + self._seconds)
        return token

    def claim(self, token: str) -> T | None:
        pending = self._pending.pop(token, None)
        if pending is None or pending.expires <= self._clock():
            return None
        return pending.value

    def _forget_expired(self) -> None:
        now = self._clock()
        for token in [t for t, p in self._pending.items() if p.expires <= now]:
            del self._pending[token]
