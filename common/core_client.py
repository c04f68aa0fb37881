"""The provider's HTTP client for UCloud/Core (aiohttp).

What a provider calls on Core: it trades its refresh token for a short-lived
access token (``POST /auth/providers/refresh``), pushes job updates
(``POST /api/jobs/control/update``), registers its products
(``POST /api/products/v2``), approves or clears user connections
(``/api/providers/integration/control/{approve,clear}Connection``) and registers
the drives it offers (``/api/files/collections/control/{register,browse}``).

* The access token is cached and renewed before it expires: its ``exp`` claim
  is read without verifying the signature (the provider only needs to know when
  to renew; Core verifies), and a token with less than three minutes left is
  replaced, as UCloud's own Go client does. A 401 from Core drops the token and
  the call is made once more with a fresh one.
* Connection errors, timeouts and 5xx answers are retried with jittered
  exponential backoff (tenacity); when the attempts run out, ``CoreUnavailableError``.
  A 4xx is Core's final word: ``CoreRejectedError`` carries its ``why``.
* Job updates go out in requests of at most 100 items, as the anchor sends them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from itertools import islice
from typing import Any, Final, TypeVar

import aiohttp
import jwt
from pydantic import SecretStr
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from ucim.common.http_client import SessionClient
from ucim.common.protocol import (
    AccessTokenAndCsrf,
    BulkRequest,
    BulkResponse,
    Drive,
    DriveSpecification,
    FindByStringId,
    FindByUsername,
    Job,
    JobUpdate,
    JobUpdateItem,
    PageV2,
    ProductV2,
    ProviderRegisteredResource,
    RefreshTokenItem,
    ReportUsageRequest,
    dump,
)

REFRESH_PATH: Final = "/auth/providers/refresh"
JOB_UPDATE_PATH: Final = "/api/jobs/control/update"
JOB_RETRIEVE_PATH: Final = "/api/jobs/control/retrieve"
PRODUCTS_PATH: Final = "/api/products/v2"
APPROVE_CONNECTION_PATH: Final = "/api/providers/integration/control/approveConnection"
CLEAR_CONNECTION_PATH: Final = "/api/providers/integration/control/clearConnection"
DRIVE_REGISTER_PATH: Final = "/api/files/collections/control/register"
DRIVE_RETRIEVE_PATH: Final = "/api/files/collections/control/retrieve"
DRIVE_BROWSE_PATH: Final = "/api/files/collections/control/browse"
REPORT_USAGE_PATH: Final = "/api/accounting/v2/reportUsage"
# The anchor's batch of usage reports.
MAX_USAGE_ITEMS_PER_REQUEST: Final = 500

# Renew the access token when it has less than this left (UCloud's shared/pkg/rpc/client.go).
RENEW_BEFORE_SECONDS: Final = 180.0
# A token whose expiry cannot be read is used for at most this long.
UNREADABLE_TOKEN_LIFETIME_SECONDS: Final = 60.0
MAX_ITEMS_PER_REQUEST: Final = 100
# Core's largest page (ItemsPerPage caps at 1000); a provider's drives are few, so one page is the rule.
BROWSE_PAGE_SIZE: Final = 1000
DEFAULT_TIMEOUT_SECONDS: Final = 10.0
DEFAULT_ATTEMPTS: Final = 4
# Answers that say "try again later" rather than "no".
_RETRYABLE_STATUSES: Final = frozenset({408, 425, 429})

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]


class CoreError(Exception):
    """A call to Core did not succeed."""


class CoreUnavailableError(CoreError):
    """Core could not be reached or answered 5xx, also after the retries."""


class CoreRejectedError(CoreError):
    """Core answered 4xx: the request itself is wrong; retrying it will not help."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(f"Core answered {status}: {why}")
        self.status = status
        self.why = why


class _UnauthorizedError(CoreRejectedError):
    """A 401: the access token is no longer accepted."""


def batched(items: Sequence[T], size: int) -> Iterator[list[T]]:
    """``items`` in order, in lists of at most ``size``."""
    if size < 1:
        raise ValueError("size must be positive")
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim (epoch seconds) of a JWT, read without verifying it; None when unreadable."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return None
    expiry = claims.get("exp")
    return float(expiry) if isinstance(expiry, int | float) else None


def needs_renewal(expires_at: float | None, now: float) -> bool:
    return expires_at is None or expires_at - now < RENEW_BEFORE_SECONDS


def _why(status: int, body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("why"), str) and body["why"]:
        return str(body["why"])
    return f"HTTP {status}"


class CoreClient(SessionClient):
    """Calls from the provider to Core, authenticated with a cached access token."""

    def __init__(
        self,
        url: str,
        refresh_token: SecretStr,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        attempts: int = DEFAULT_ATTEMPTS,
        clock: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        super().__init__(timeout=aiohttp.ClientTimeout(total=timeout), session=session)
        self._url = url.rstrip("/")
        self._refresh_token = refresh_token
        self._attempts = attempts
        self._clock = clock
        self._sleep = sleep
        self._token: str | None = None
        self._token_expires_at: float | None = None
        self._token_lock = asyncio.Lock()
        self.refresh_count = 0

    # --- the calls ---

    async def push_job_updates(self, items: Sequence[JobUpdateItem]) -> None:
        """``POST /api/jobs/control/update`` in requests of at most 100 items, in order."""
        for chunk in batched(items, MAX_ITEMS_PER_REQUEST):
            await self._call(JOB_UPDATE_PATH, dump(BulkRequest[JobUpdateItem](items=chunk)))

    async def job_updates(self, job_id: str) -> list[JobUpdate]:
        """The updates Core holds for a job (``GET /api/jobs/control/retrieve`` with ``includeUpdates``)."""
        answer = await self._call(JOB_RETRIEVE_PATH, None, params={"id": job_id, "includeUpdates": "true"})
        return Job.model_validate(answer).updates or []

    async def register_products(self, products: Sequence[ProductV2]) -> None:
        """``POST /api/products/v2``: Core creates or updates the provider's products."""
        if products:
            await self._call(PRODUCTS_PATH, dump(BulkRequest[ProductV2](items=list(products))))

    async def approve_connection(self, username: str) -> None:
        """Tell Core that ``username`` is now connected to this provider."""
        await self._call(APPROVE_CONNECTION_PATH, dump(FindByUsername(username=username)))

    async def clear_connection(self, username: str) -> None:
        """Tell Core that ``username`` is no longer connected to this provider."""
        await self._call(CLEAR_CONNECTION_PATH, dump(FindByUsername(username=username)))

    async def register_drives(self, drives: Sequence[ProviderRegisteredResource[DriveSpecification]]) -> list[str]:
        """``POST /api/files/collections/control/register``: the ids Core gave the drives, in order."""
        ids: list[str] = []
        for chunk in batched(drives, MAX_ITEMS_PER_REQUEST):
            body = dump(BulkRequest[ProviderRegisteredResource[DriveSpecification]](items=chunk))
            answer = BulkResponse[FindByStringId].model_validate(await self._call(DRIVE_REGISTER_PATH, body) or {})
            if len(answer.responses) != len(chunk):
                raise CoreRejectedError(200, f"register answered {len(answer.responses)} ids for {len(chunk)} drives")
            ids.extend(found.id for found in answer.responses)
        return ids

    async def browse_drives(self, provider_generated_ids: Sequence[str]) -> list[Drive]:
        """The provider's drives at Core whose providerGeneratedId is one of these (every page)."""
        wanted = set(provider_generated_ids)
        found: list[Drive] = []
        params = {"filterProviderIds": ",".join(sorted(wanted)), "itemsPerPage": str(BROWSE_PAGE_SIZE)}
        while True:
            page = PageV2[Drive].model_validate(await self._call(DRIVE_BROWSE_PATH, None, params=params) or {})
            # Filtered here too: what matters is the exact id, whatever Core's filter does.
            found.extend(drive for drive in page.items if drive.provider_generated_id in wanted)
            if not page.next:
                return found
            params = {**params, "next": page.next}

    async def retrieve_drive(self, drive_id: str) -> Drive:
        """``GET /api/files/collections/control/retrieve``: one drive as Core holds it (CoreRejectedError: unknown)."""
        return Drive.model_validate(await self._call(DRIVE_RETRIEVE_PATH, None, params={"id": drive_id}))

    async def report_usage(self, items: Sequence[ReportUsageRequest]) -> list[bool]:
        """``POST /api/accounting/v2/reportUsage``: per item, whether its wallet is still usable (not locked)."""
        answers: list[bool] = []
        for chunk in batched(items, MAX_USAGE_ITEMS_PER_REQUEST):
            body = dump(BulkRequest[ReportUsageRequest](items=chunk))
            answer = BulkResponse[bool].model_validate(await self._call(REPORT_USAGE_PATH, body) or {})
            if len(answer.responses) != len(chunk):
                raise CoreRejectedError(200, f"reportUsage answered {len(answer.responses)} for {len(chunk)} items")
            answers.extend(answer.responses)
        return answers

    async def access_token(self) -> str:
        """A token Core accepts for the next few minutes, refreshed when it is about to expire."""
        async with self._token_lock:
            if self._token is None or needs_renewal(self._token_expires_at, self._clock()):
                token = await self._refresh()
                expiry = token_expiry(token)
                if expiry is None:
                    expiry = self._clock() + RENEW_BEFORE_SECONDS + UNREADABLE_TOKEN_LIFETIME_SECONDS
                self._token, self._token_expires_at = token, expiry
            return self._token

    def forget_token(self, token: str) -> None:
        """Drop ``token`` (Core refused it), unless another call has already replaced it."""
        if self._token == token:
            self._token = self._token_expires_at = None

    # --- plumbing ---

    async def _call(self, path: str, body: Any, params: dict[str, str] | None = None) -> Any:
        """POST ``body`` (or GET with ``params`` when there is no body) with retries; the parsed answer."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(CoreUnavailableError),
            wait=wait_random_exponential(multiplier=0.2, max=5),
            stop=stop_after_attempt(self._attempts),
            sleep=self._sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._call_authorized(path, body, params)
        raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover

    async def _call_authorized(self, path: str, body: Any, params: dict[str, str] | None) -> Any:
        token = await self.access_token()
        try:
            return await self._send(path, body, {"Authorization": f"Bearer {token}"}, params)
        except _UnauthorizedError:
            # The token was revoked or Core restarted with new keys: one more try with a fresh token.
            self.forget_token(token)
            token = await self.access_token()
            return await self._send(path, body, {"Authorization": f"Bearer {token}"}, params)

    async def _refresh(self) -> str:
        body = dump(
            BulkRequest[RefreshTokenItem](
                items=[RefreshTokenItem(refresh_token=self._refresh_token.get_secret_value())]
            )
        )
        answer = BulkResponse[AccessTokenAndCsrf].model_validate(await self._send(REFRESH_PATH, body, {}))
        if len(answer.responses) != 1:
            raise CoreRejectedError(200, f"refresh answered {len(answer.responses)} tokens for one refresh token")
        self.refresh_count += 1
        return answer.responses[0].access_token

    async def _send(self, path: str, body: Any, headers: dict[str, str], params: dict[str, str] | None = None) -> Any:
        """One request: a POST of ``body``, or a GET with ``params`` when ``body`` is None."""
        method = "POST" if body is not None else "GET"
        try:
            async with self._http().request(
                method, self._url + path, json=body, params=params, headers=headers
            ) as response:
                try:
                    answer = await response.json(content_type=None)
                except ValueError:
                    answer = None
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            reason = str(error) or type(error).__name__
            raise CoreUnavailableError(f"Core is unreachable at {self._url}{path}: {reason}") from error
        if status < 300:
            return answer
        why = _why(status, answer)
        if status >= 500 or status in _RETRYABLE_STATUSES:
            raise CoreUnavailableError(f"Core answered {status} to {path}: {why}")
        if status == 401:
            raise _UnauthorizedError(status, why)
        raise CoreRejectedError(status, why)
