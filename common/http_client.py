"""The lifecycle of an aiohttp session that a client may be given or may own."""

from __future__ import annotations

from types import TracebackType
from typing import Self

import aiohttp


class SessionClient:
    """Base of our HTTP clients: a caller's session is used as is; otherwise one is made lazily and closed here."""

    def __init__(self, *, timeout: aiohttp.ClientTimeout, session: aiohttp.ClientSession | None = None) -> None:
        self._timeout = timeout
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
            self._owns_session = True
        return self._session
