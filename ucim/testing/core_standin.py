"""A UCloud/Core stand-in that speaks the provider protocol, for tests and the demo.

It plays both halves of Core that a provider meets:

* the server a provider calls: ``POST /auth/providers/refresh``,
  ``POST /api/jobs/control/update``, ``POST /api/products/v2``,
  ``POST /api/providers/integration/control/{approve,clear}Connection`` and the
  drives' ``/api/files/collections/control/{register,browse,retrieve}`` (drives are kept in
  ``drives``, a ``DriveStore``), and accounting: the ``/api/accounting/notifications``
  event stream and ``POST /api/accounting/v2/reportUsage`` (projects and wallets are
  kept in ``accounting``, a ``CoreAccounting``). Everything received is recorded, and
  failures can be injected to test redelivery;
* the application catalogue: ``applications``, an ``ApplicationStore`` that starts with
  the library in ``ucim/testing/apps`` and takes more v2 YAML through
  ``upload_application`` or ``PUT /api/hpc/apps/upload`` (Core's admin-only call; roles
  are not modelled). ``make_job`` sends a job with the application it names resolved
  from there, as Core does;
* the client that calls the provider at ``/ucloud/<providerId>/...`` with a
  fresh RS256 service JWT and, on 449/503 for a user, the
  ``integration/init`` + retry loop Core runs (5 attempts, 500 ms apart). File
  calls (``files_browse``, ``files_call``, ``create_upload``, ...) send the drive
  of each file as ``resolvedCollection``, as Core does; ``upload``/``download``
  then play the browser on the endpoints the provider answered, and ``upload_folder`` a
  folder upload over WEBSOCKET_V2 (``ucim.testing.folder_upload_client``).

Facts (paths, claims, retry counts) come from docs/protocol.md; wire shapes from
``ucim.common.protocol``. Run it as a process with
``python -m ucim.testing.core_standin --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json as json_lib  # `json` is the name of call_provider's body argument
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeVar

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import BaseModel, ValidationError

from ucim.common.instance_api import CHUNKED_OFFSET_HEADER, CHUNKED_TOKEN_HEADER, CHUNKED_TOTAL_SIZE_HEADER
from ucim.common.protocol import (
    USERNAME_HEADER,
    AccessTokenAndCsrf,
    AccountingUnit,
    Application,
    ApplicationParameter,
    AppParameterValue,
    BulkRequest,
    BulkResponse,
    ConnectResponse,
    Drive,
    DriveSpecification,
    FilesCreateDownloadResponseItem,
    FilesCreateUploadResponseItem,
    FindByStringId,
    FindByUsername,
    FSSupport,
    IntegrationManifest,
    Job,
    JobExtendRequestItem,
    JobSpecification,
    JobState,
    JobStatus,
    JobSupport,
    JobUpdate,
    JobUpdateItem,
    NameAndVersion,
    PageV2,
    ProductCategory,
    ProductReference,
    ProductV2,
    ProviderBranding,
    ProviderFile,
    ProviderRegisteredResource,
    RefreshTokenItem,
    ResolvedSupport,
    ResourceOwner,
    ResourcePermissions,
    SimpleDuration,
    SortDirection,
    UniversalBackendSupport,
    UploadType,
    WriteConflictPolicy,
    dump,
    encode_username,
    error_body,
    now_ms,
)
from ucim.common.transfer_contract import WEB_CLIENT_CHUNK_BYTES
from ucim.gateway.jobs import job_application
from ucim.testing.app_yaml import ApplicationRefusedError
from ucim.testing.core_accounting import NOTIFICATIONS_PATH, REPORT_USAGE_PATH, CoreAccounting, UsageRefusedError
from ucim.testing.core_apps import ApplicationStore, parameter_refusal, requested_time
from ucim.testing.core_drives import DriveRefusedError, DriveStore, browse_body, resolve_items, retrieve_body
from ucim.testing.core_follow import follow_frames
from ucim.testing.folder_upload_client import FolderUploadResult, LocalFile, upload_folder

ISSUER = "cloud.sdu.dk"
AUDIENCE = "all:write"
SERVICE_SUBJECT = "_UCloud"
PROVIDER_SUBJECT_PREFIX = "#P_"
TOKEN_LIFETIME_SECONDS = 600
# Core answers these by calling integration/init and retrying (core2 orchestrator.go).
USER_NOT_READY_STATUSES = frozenset({449, 503})
INIT_RETRY_ATTEMPTS = 5
INIT_RETRY_DELAY_SECONDS = 0.5
PROVIDER_CALL_TIMEOUT_SECONDS = 5.0
# What Core asks every provider every 10 s, without a user (core2 orchestrator/features.go, provider_brandings.go).
POLLED_PATHS = (
    "integration/retrieveManifest",
    "files/collections/retrieveProducts",
    "jobs/retrieveProducts",
    "ingresses/retrieveProducts",
    "networkips/retrieveProducts",
    "licenses/retrieveProducts",
    "private-networks/retrieveProducts",
    "provider/branding/retrieveInfo",
)

# What make_job runs when a test names no application (from the library; every parameter is optional).
DEFAULT_APPLICATION: Final = ("sleep-exit", "1")

M = TypeVar("M", bound=BaseModel)


# --- keys and tokens ----------------------------------------------------------


class CoreKeys:
    """The per-provider RSA-2048 key pair Core holds; it signs every JWT Core mints."""

    def __init__(self, private_key: rsa.RSAPrivateKey) -> None:
        self._private_key = private_key

    @classmethod
    def generate(cls) -> Self:
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def from_pem(cls, pem: bytes) -> Self:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise TypeError("the Core key must be an RSA private key")
        return cls(key)

    @classmethod
    def load_or_create(cls, path: Path) -> Self:
        """Load a PEM private key, or create and save one, so a demo keeps its key across restarts."""
        if path.exists():
            return cls.from_pem(path.read_bytes())
        keys = cls.generate()
        path.touch(mode=0o600)
        path.write_bytes(keys.private_key_pem())
        return keys

    def private_key_pem(self) -> bytes:
        return self._private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def public_key_pem(self) -> str:
        """The public key as PEM (``ucloud_crt.pem`` style configuration)."""
        return (
            self._private_key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode("ascii")
        )

    def public_key_b64(self) -> str:
        """The public key as Core hands it out: base64 DER SPKI, no headers (``ucloud_key.pub``)."""
        der = self._private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode("ascii")

    def sign(self, claims: Mapping[str, Any]) -> str:
        return jwt.encode(dict(claims), self._private_key, algorithm="RS256")

    def verify(self, token: str) -> dict[str, Any]:
        """Decode a token Core minted; raises ``jwt.InvalidTokenError`` otherwise."""
        claims: dict[str, Any] = jwt.decode(
            token,
            self._private_key.public_key(),
            algorithms=["RS256"],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["exp", "iat", "sub", "iss", "aud"]},
        )
        return claims


def token_claims(
    *,
    subject: str,
    role: str,
    principal_type: str,
    expires_in: float = TOKEN_LIFETIME_SECONDS,
    issued_at: float | None = None,
    issuer: str = ISSUER,
    audience: Sequence[str] = (AUDIENCE,),
) -> dict[str, Any]:
    """The claims of a Core JWT (core2 auth_providers.go); every argument can be bent for forgeries."""
    now = int(time.time() if issued_at is None else issued_at)
    return {
        "sub": subject,
        "role": role,
        "principalType": principal_type,
        "aud": list(audience),
        "iss": issuer,
        "iat": now,
        "exp": now + int(expires_in),
    }


def unsigned_token(claims: Mapping[str, Any]) -> str:
    """An ``alg: none`` token, the classic forgery a verifier must refuse."""
    return jwt.encode(dict(claims), key="", algorithm="none")


# --- what the stand-in saw ----------------------------------------------------


@dataclass(frozen=True)
class ProviderCall:
    """One request Core made to the provider and how it was answered (fault drills check every one)."""

    method: str
    path: str  # relative to /ucloud/<provider id>/, e.g. "jobs"
    job_ids: tuple[str, ...]  # the jobs a jobs call was about
    started_at: float  # time.time()
    seconds: float  # until the answer, or until it failed
    status: int | None  # None: no answer (connection refused or dropped, timed out)
    why: str  # the answer's ``why``, or what went wrong


@dataclass
class CoreRecord:
    """Everything providers sent to the stand-in, in arrival order."""

    refresh_count: int = 0
    job_updates: list[JobUpdateItem] = field(default_factory=list)
    # When each of job_updates arrived (time.time(), epoch seconds), for latency measurements.
    job_update_received_at: list[float] = field(default_factory=list)
    products: list[ProductV2] = field(default_factory=list)
    approved_connections: list[str] = field(default_factory=list)
    cleared_connections: list[str] = field(default_factory=list)
    # Requests per path, failed ones included: shows how often a provider retried.
    requests: Counter[str] = field(default_factory=Counter)
    # Every call Core made to the provider, in the order they were made.
    provider_calls: list[ProviderCall] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def updates_for(self, job_id: str) -> list[JobUpdate]:
        return [item.update for item in self.job_updates if item.id == job_id]

    def received(self, job_id: str) -> list[tuple[float, JobUpdate]]:
        """(arrival time as epoch seconds, update) for ``job_id``, in arrival order."""
        pairs = zip(self.job_update_received_at, self.job_updates, strict=True)
        return [(at, item.update) for at, item in pairs if item.id == job_id]

    async def add_job_updates(self, items: Iterable[JobUpdateItem]) -> None:
        received_at = time.time()
        async with self.changed:
            for item in items:
                self.job_updates.append(item)
                self.job_update_received_at.append(received_at)
            self.changed.notify_all()

    async def add_cleared_connection(self, username: str) -> None:
        async with self.changed:
            self.cleared_connections.append(username)
            self.changed.notify_all()

    async def wait_for_cleared(self, username: str, timeout: float) -> None:  # noqa: ASYNC109
        """Return once a provider has cleared ``username``'s connection (clearConnection)."""
        try:
            async with asyncio.timeout(timeout), self.changed:
                await self.changed.wait_for(lambda: username in self.cleared_connections)
        except TimeoutError:
            seen = self.cleared_connections
            raise TimeoutError(f"no clearConnection of {username} within {timeout}s; cleared: {seen}") from None

    async def wait_for_update(self, job_id: str, state: JobState, timeout: float) -> JobUpdate:  # noqa: ASYNC109
        return await self.wait_for_update_where(job_id, lambda update: update.state == state, str(state), timeout)

    async def wait_for_update_where(
        self,
        job_id: str,
        wanted: Callable[[JobUpdate], bool],
        what: str,
        timeout: float,  # noqa: ASYNC109
    ) -> JobUpdate:
        """The first update of ``job_id`` that is ``wanted`` (``what`` names it in the timeout's message)."""

        def matching() -> list[JobUpdate]:
            return [update for update in self.updates_for(job_id) if wanted(update)]

        try:
            async with asyncio.timeout(timeout), self.changed:
                # wait_for returns the predicate's first truthy value: a non-empty list.
                return (await self.changed.wait_for(matching))[0]
        except TimeoutError:
            seen = [update.state for update in self.updates_for(job_id)]
            raise TimeoutError(f"no {what} update for job {job_id} within {timeout}s; saw {seen}") from None


# --- failure injection --------------------------------------------------------

FailureMode = Literal["status", "disconnect"]


@dataclass
class FailureRule:
    """Fail requests to ``path`` (None: every path) by status or by dropping the connection."""

    path: str | None
    mode: FailureMode
    status: int
    remaining: int | None  # requests still to fail; None: no count limit
    until: float | None  # time.monotonic() deadline; None: no time limit

    def applies(self, path: str, now: float) -> bool:
        if self.path is not None and self.path != path:
            return False
        if self.until is not None and now >= self.until:
            return False
        return self.remaining is None or self.remaining > 0


@dataclass
class FailurePlan:
    rules: list[FailureRule] = field(default_factory=list)

    def add(self, rule: FailureRule) -> None:
        self.rules.append(rule)

    def clear(self) -> None:
        self.rules.clear()

    def take(self, path: str) -> FailureRule | None:
        """The rule that fails this request, if any, counting it against the rule's budget."""
        now = time.monotonic()
        rule = next((r for r in self.rules if r.applies(path, now)), None)
        if rule is not None and rule.remaining is not None:
            rule.remaining -= 1
        return rule


# --- Core → provider responses ------------------------------------------------


@dataclass(frozen=True)
class ProviderResponse:
    status: int
    body: Any  # parsed JSON, text, or None when empty
    headers: Mapping[str, str]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def raise_for_status(self) -> None:
        if not self.ok:
            raise ProviderCallError(self.status, self.body)


@dataclass(frozen=True)
class BrowserResponse:
    """A transfer endpoint's answer, body as bytes."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        return json_lib.loads(self.body)


class ProviderCallError(Exception):
    """The provider answered a Core call with a non-2xx status."""

    def __init__(self, status: int, body: Any) -> None:
        why = body.get("why") if isinstance(body, dict) else body
        super().__init__(f"provider answered {status}: {why}")
        self.status = status
        self.body = body


def _chunk_reader(data: bytes | Path, size: int) -> Callable[[int], Awaitable[bytes]]:
    """``await read(offset)``: the chunk of ``data`` (bytes, or a file read off the event loop) at ``offset``."""
    if isinstance(data, Path):
        path = data

        def from_file(offset: int) -> bytes:
            with path.open("rb") as source:
                source.seek(offset)
                return source.read(size)

        return lambda offset: asyncio.to_thread(from_file, offset)
    content = data

    async def from_bytes(offset: int) -> bytes:
        return content[offset : offset + size]

    return from_bytes


# --- the stand-in -------------------------------------------------------------


class CoreStandIn:
    """UCloud/Core as one provider sees it: a server it calls and a client that calls it."""

    def __init__(
        self,
        provider_id: str,
        refresh_token: str,
        *,
        keys: CoreKeys | None = None,
        provider_url: str | None = None,
        init_retry_attempts: int = INIT_RETRY_ATTEMPTS,
        init_retry_delay: float = INIT_RETRY_DELAY_SECONDS,
        init_sends_username_header: bool = True,
        call_timeout: float = PROVIDER_CALL_TIMEOUT_SECONDS,
        strict_wire: bool = True,
    ) -> None:
        self.provider_id = provider_id
        self.refresh_token = refresh_token
        self.keys = keys or CoreKeys.generate()
        # Base URL of the provider's public endpoint, e.g. http://127.0.0.1:8889
        self.provider_url = provider_url
        self.init_retry_attempts = init_retry_attempts
        self.init_retry_delay = init_retry_delay
        # core2 sends init with UCloud-Username; the older Kotlin Core sent it without.
        self.init_sends_username_header = init_sends_username_header
        self.call_timeout = call_timeout
        # Also refuse JobUpdates with keys left out, which Go never does (Option is written as null).
        self.strict_wire = strict_wire
        self.record = CoreRecord()
        self.failures = FailurePlan()
        self.jobs: dict[str, Job] = {}  # jobs sent to the provider, by id
        self.drives = DriveStore(provider_id)  # drives the provider registered, by Core's id
        self.applications = ApplicationStore.with_library()  # Core's catalogue, by (name, version)
        # Projects, wallets and the notifications stream; categories are those of the registered products.
        self.accounting = CoreAccounting(provider_id, self.record.products, self.is_provider_token)
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._listen: tuple[str, int] | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.stop()

    # --- tokens ---

    def mint_service_token(
        self,
        *,
        subject: str = SERVICE_SUBJECT,
        role: str = "SERVICE",
        principal_type: str = "service",
        expires_in: float = TOKEN_LIFETIME_SECONDS,
        issued_at: float | None = None,
        issuer: str = ISSUER,
        audience: Sequence[str] = (AUDIENCE,),
        signed_by: CoreKeys | None = None,
        extra_claims: Mapping[str, Any] | None = None,
    ) -> str:
        """The JWT Core sends to providers. The arguments forge bad ones: another key, expired, ..."""
        claims = token_claims(
            subject=subject,
            role=role,
            principal_type=principal_type,
            expires_in=expires_in,
            issued_at=issued_at,
            issuer=issuer,
            audience=audience,
        )
        claims.update(extra_claims or {})
        return (signed_by or self.keys).sign(claims)

    def mint_provider_token(self, *, expires_in: float = TOKEN_LIFETIME_SECONDS) -> str:
        """The access token ``/auth/providers/refresh`` hands to the provider."""
        return self.keys.sign(
            token_claims(
                subject=PROVIDER_SUBJECT_PREFIX + self.provider_id,
                role="PROVIDER",
                principal_type="provider",
                expires_in=expires_in,
            )
        )

    def is_provider_token(self, token: str) -> bool:
        """Whether ``token`` is an access token this Core minted for its provider (role PROVIDER)."""
        try:
            claims = self.keys.verify(token)
        except jwt.InvalidTokenError:
            return False
        return claims.get("role") == "PROVIDER" and claims.get("sub") == PROVIDER_SUBJECT_PREFIX + self.provider_id

    def write_public_key(self, path: Path, fmt: Literal["ucloud", "pem"] = "ucloud") -> None:
        """Write the public key as a provider is configured with it."""
        text = self.keys.public_key_pem() if fmt == "pem" else self.keys.public_key_b64() + "\n"
        path.write_text(text)

    # --- what was received ---

    def updates_for(self, job_id: str) -> list[JobUpdate]:
        """Every JobUpdate received for ``job_id``, in arrival order."""
        return self.record.updates_for(job_id)

    async def wait_for_update(
        self,
        job_id: str,
        state: JobState,
        timeout: float = 5.0,  # noqa: ASYNC109 - a test helper's budget
    ) -> JobUpdate:
        """The first update that moved ``job_id`` to ``state``, waiting for it if needed."""
        return await self.record.wait_for_update(job_id, state, timeout)

    async def wait_for_update_where(
        self,
        job_id: str,
        wanted: Callable[[JobUpdate], bool],
        what: str,
        timeout: float = 5.0,  # noqa: ASYNC109 - a test helper's budget
    ) -> JobUpdate:
        """The first update of ``job_id`` that is ``wanted`` (a new time allocation, say), waiting for it if needed."""
        return await self.record.wait_for_update_where(job_id, wanted, what, timeout)

    # --- failure injection ---

    def fail_requests(
        self,
        path: str | None = "/api/jobs/control/update",
        *,
        times: int | None = None,
        seconds: float | None = None,
        status: int = 503,
        mode: FailureMode = "status",
    ) -> None:
        """Fail requests to ``path`` for the next ``times`` requests and/or ``seconds``.

        With neither limit the failure lasts until ``clear_failures()``.
        ``mode="disconnect"`` closes the connection without an answer.
        """
        until = None if seconds is None else time.monotonic() + seconds
        self.failures.add(FailureRule(path=path, mode=mode, status=status, remaining=times, until=until))

    def clear_failures(self) -> None:
        self.failures.clear()

    # --- serving ---

    def app(self) -> web.Application:
        return init_app(self)

    @property
    def url(self) -> str:
        if self._listen is None:
            raise RuntimeError("the stand-in is not serving; call start() first")
        host, port = self._listen
        return f"http://{host}:{port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve the Core endpoints in the running loop; returns the base URL."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        self._listen = (host, port)
        await self.go_online()
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = self._site = None
        self._listen = None

    async def go_offline(self) -> None:
        """Refuse connections (listener closed) and drop kept-alive ones and event streams, until ``go_online()``."""
        self.fail_requests(None, mode="disconnect")
        await self.accounting.disconnect_sessions()
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def go_online(self) -> None:
        if self._runner is None or self._listen is None:
            raise RuntimeError("the stand-in is not serving; call start() first")
        self.failures.rules = [r for r in self.failures.rules if not (r.path is None and r.mode == "disconnect")]
        if self._site is None:
            host, port = self._listen
            self._site = web.TCPSite(self._runner, host, port)
            await self._site.start()
            if port == 0:  # keep the port the OS chose, so going online again reuses it
                self._listen = (host, self._runner.addresses[0][1])

    # --- calling the provider ---

    def provider_endpoint(self, path: str) -> str:
        """``path`` relative to ``/ucloud/<providerId>/`` (or a full ``/ucloud/...`` path) as a URL."""
        if self.provider_url is None:
            raise RuntimeError("provider_url is not set")
        if not path.startswith("/ucloud/"):
            path = f"/ucloud/{self.provider_id}/{path.lstrip('/')}".rstrip("/")
        return self.provider_url.rstrip("/") + path

    async def call_provider(
        self,
        method: str,
        path: str,
        json: Any = None,
        username: str | None = None,
    ) -> ProviderResponse:
        """Call the provider as Core does, including the user-not-ready loop.

        When the call is made for a user and the provider answers 449 (or 503),
        Core calls ``integration/init {"username"}``, sleeps, and retries: at most
        ``init_retry_attempts`` times. The last answer is returned as it is.
        """
        headers = {} if username is None else {USERNAME_HEADER: encode_username(username)}
        attempt = 0
        while True:
            attempt += 1
            response = await self._send(method, self.provider_endpoint(path), json, headers)
            user_not_ready = response.status in USER_NOT_READY_STATUSES
            if username is None or not user_not_ready or attempt > self.init_retry_attempts:
                return response
            await self._init_user(username, headers)
            await asyncio.sleep(self.init_retry_delay)

    def _provider_session(self) -> aiohttp.ClientSession:
        """Core's client for provider calls: its timeout, and no cap on concurrent calls (Go's http.Client has
        none; aiohttp's default of 100 made a login storm's calls queue here, not at the provider)."""
        connector = aiohttp.TCPConnector(limit=0)
        return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=self.call_timeout))

    async def _init_user(self, username: str, headers: Mapping[str, str]) -> None:
        init_headers = headers if self.init_sends_username_header else {}
        # Core ignores the outcome of init; the retry tells whether it worked.
        with contextlib.suppress(aiohttp.ClientError):
            await self._send("POST", self.provider_endpoint("integration/init"), {"username": username}, init_headers)

    async def _send(self, method: str, url: str, body: Any, headers: Mapping[str, str]) -> ProviderResponse:
        self._session = self._session or self._provider_session()
        all_headers = {"Authorization": f"Bearer {self.mint_service_token()}", **headers}
        started_at, started = time.time(), time.monotonic()

        def record(status: int | None, why: str) -> None:
            path = url.split(f"/ucloud/{self.provider_id}/", 1)[-1]
            call = ProviderCall(method, path, _job_ids(body), started_at, time.monotonic() - started, status, why)
            self.record.provider_calls.append(call)

        try:
            async with self._session.request(method, url, json=body, headers=all_headers) as response:
                text = await response.text()
                answer = ProviderResponse(response.status, _json_or_text(text), dict(response.headers))
        except (aiohttp.ClientError, TimeoutError) as error:
            record(None, f"no answer: {error!r}")
            raise
        record(answer.status, str(answer.body.get("why", "")) if isinstance(answer.body, dict) else "")
        return answer

    async def create_jobs(self, jobs: Sequence[Job], username: str | None = None) -> list[FindByStringId]:
        """``POST /ucloud/<id>/jobs``; returns one ``{id: providerGeneratedId}`` per job."""
        for job in jobs:
            self.jobs[job.id] = job
        response = await self.call_provider(
            "POST", "jobs", dump(BulkRequest[Job](items=list(jobs))), username or _owner_of(jobs)
        )
        return _parse_ok(response, BulkResponse[FindByStringId]).responses

    async def request_dynamic_parameters(
        self, username: str, name: str, version: str, project: str | None = None
    ) -> list[ApplicationParameter]:
        """``POST jobs/requestDynamicParameters`` as Core sends it when a user opens an application."""
        application = self.applications.resolve(NameAndVersion(name=name, version=version))
        body = {"owner": dump(ResourceOwner(created_by=username, project=project)), "application": dump(application)}
        response = await self.call_provider("POST", "jobs/requestDynamicParameters", body, username)
        response.raise_for_status()
        return [ApplicationParameter.model_validate(item) for item in response.body["parameters"]]

    async def terminate_jobs(self, jobs: Sequence[Job], username: str | None = None) -> None:
        response = await self.call_provider(
            "POST", "jobs/terminate", dump(BulkRequest[Job](items=list(jobs))), username or _owner_of(jobs)
        )
        response.raise_for_status()

    async def extend_jobs(
        self, extensions: Sequence[tuple[Job, SimpleDuration]], username: str | None = None
    ) -> ProviderResponse:
        """``POST jobs/extend`` as core2 sends it: each job as Core holds it and the time to add; the answer as it is.

        Core refuses the call itself unless the product's support has ``timeExtension`` (core2
        ``orchestrator/job.go``): so does the stand-in, with Core's 400.
        """
        for job, _ in extensions:
            support = await self._support_of(job)
            if support is None or not (support.native is not None and support.native.time_extension):
                raise ProviderCallError(400, {"why": "time extension is not supported by this provider"})
        items = [
            JobExtendRequestItem(job=self.jobs.get(job.id, job), requested_time=requested)
            for job, requested in extensions
        ]
        first = extensions[0][0] if extensions else None
        owner = username or (_owner_of([first]) if first is not None else None)
        body = dump(BulkRequest[JobExtendRequestItem](items=items))
        return await self.call_provider("POST", "jobs/extend", body, owner)

    async def _support_of(self, job: Job) -> JobSupport | None:
        product = job.specification.product
        supports = await self.retrieve_products()
        wanted = (product.id, product.category)
        return next((s for s in supports if (s.product.id, s.product.category) == wanted), None)

    async def follow_job(self, job_id: str, username: str) -> AsyncIterator[dict[str, Any]]:
        """The follow websocket of a job, as Core dials it: every frame the provider sends (``core_follow``)."""
        self._session = self._session or self._provider_session()
        job = self.jobs.get(job_id) or make_job(job_id, username)
        hint = base64.urlsafe_b64encode(username.encode()).decode().rstrip("=")
        url = self.provider_endpoint(f"/ucloud/jobs.provider.{self.provider_id}/websocket") + f"?usernameHint={hint}"
        async for frame in follow_frames(self._session, url, self.mint_service_token(), self.provider_id, job):
            yield frame

    async def retrieve_products(self) -> list[JobSupport]:
        """``GET /ucloud/<id>/jobs/retrieveProducts``, which Core polls to learn the support flags."""
        response = await self.call_provider("GET", "jobs/retrieveProducts")
        return _parse_ok(response, BulkResponse[JobSupport]).responses

    async def poll_provider(self) -> dict[str, int]:
        """One round of the polls Core makes of every provider (``POLLED_PATHS``): each answer's status, by path."""
        return {path: (await self.call_provider("GET", path)).status for path in POLLED_PATHS}

    async def retrieve_branding(self) -> ProviderBranding:
        response = await self.call_provider("GET", "provider/branding/retrieveInfo")
        return _parse_ok(response, ProviderBranding)

    async def connect(self, username: str) -> ConnectResponse:
        response = await self.call_provider("POST", "integration/connect", dump(FindByUsername(username=username)))
        return _parse_ok(response, ConnectResponse)

    async def retrieve_manifest(self) -> IntegrationManifest:
        response = await self.call_provider("GET", "integration/retrieveManifest")
        return _parse_ok(response, IntegrationManifest)

    # --- applications ---

    def upload_application(self, yaml_text: str) -> Application:
        """Add a v2 YAML application as an admin's upload would; ``ApplicationRefusedError`` as Core refuses it."""
        return self.applications.upload(yaml_text)

    # --- drives and files ---

    def drives_of(self, username: str) -> list[Drive]:
        """The user's personal drives (their home), as registered by the provider."""
        return self.drives.of_user(username)

    def project_drives(self, project: str) -> list[Drive]:
        return self.drives.of_project(project)

    def home_of(self, username: str) -> Drive:
        """The user's one personal drive; an error when the provider registered none (or several)."""
        drives = self.drives_of(username)
        if len(drives) != 1:
            raise LookupError(f"{username} has {len(drives)} personal drives at Core, not one: {drives}")
        return drives[0]

    async def retrieve_storage_products(self) -> list[FSSupport]:
        """``GET files/collections/retrieveProducts``, which Core polls for the drives' support flags."""
        response = await self.call_provider("GET", "files/collections/retrieveProducts")
        return _parse_ok(response, BulkResponse[FSSupport]).responses

    async def files_browse_call(
        self,
        username: str,
        path: str,
        *,
        items_per_page: int = 0,
        next_token: str | None = None,
        sort_by: str | None = None,
        sort_direction: SortDirection | None = None,
        flags: Mapping[str, Any] | None = None,
    ) -> ProviderResponse:
        """``POST files/browse`` of the folder ``path`` (``/<drive id>/...``), the answer as it is."""
        body = browse_body(
            self.drives.drive_of(path),
            path,
            items_per_page=items_per_page,
            next_token=next_token,
            sort_by=sort_by,
            sort_direction=sort_direction,
            flags=flags,
        )
        return await self.call_provider("POST", "files/browse", body, username)

    async def files_browse(self, username: str, path: str, **options: Any) -> PageV2[ProviderFile]:
        """``files_browse_call`` parsed; a non-2xx answer raises ProviderCallError."""
        return _parse_ok(await self.files_browse_call(username, path, **options), PageV2[ProviderFile])

    async def files_retrieve(self, username: str, file_id: str) -> ProviderFile:
        body = retrieve_body(self.drives.drive_of(file_id), file_id)
        return _parse_ok(await self.call_provider("POST", "files/retrieve", body, username), ProviderFile)

    async def files_call(self, username: str, operation: str, items: Sequence[Mapping[str, Any]]) -> ProviderResponse:
        """A bulk file call as Core makes it: ``folder``, ``move``, ``copy``, ``trash``, ``emptyTrash``, ``delete``
        (and ``upload``, ``download``).

        ``items`` are the end user's items (``{"id", "conflictPolicy"}``, ``{"oldId", "newId",
        "conflictPolicy"}``, ``{"id"}``); the drives are resolved here, and ``delete`` goes out as
        ``DELETE files`` with UFile items. The answer is returned as it is.
        """
        body = {"items": resolve_items(operation, items, self.drives)}
        if operation == "delete":
            return await self.call_provider("DELETE", "files", body, username)
        return await self.call_provider("POST", f"files/{operation}", body, username)

    async def create_upload(
        self,
        username: str,
        path: str,
        *,
        upload_type: UploadType = "FILE",
        conflict_policy: WriteConflictPolicy = "REJECT",
        protocols: Sequence[str] = ("CHUNKED", "WEBSOCKET"),
    ) -> FilesCreateUploadResponseItem:
        """``POST files/upload`` for one target; the endpoint, protocol and token the browser gets."""
        item = {
            "id": path,
            "type": upload_type,
            "supportedProtocols": list(protocols),
            "conflictPolicy": conflict_policy,
        }
        response = await self.files_call(username, "upload", [item])
        answer = _parse_ok(response, BulkResponse[FilesCreateUploadResponseItem])
        if len(answer.responses) != 1:  # core2 answers 502 "malformed response" here
            raise ProviderCallError(502, {"why": f"malformed response: {len(answer.responses)} items for one"})
        return answer.responses[0]

    async def create_download(self, username: str, path: str) -> FilesCreateDownloadResponseItem:
        """``POST files/download`` for one file; the endpoint the browser gets."""
        response = await self.files_call(username, "download", [{"id": path}])
        answer = _parse_ok(response, BulkResponse[FilesCreateDownloadResponseItem])
        if len(answer.responses) != 1:
            raise ProviderCallError(502, {"why": f"malformed response: {len(answer.responses)} items for one"})
        return answer.responses[0]

    # --- shells ---

    async def open_shell(self, job: Job, rank: int = 0, username: str | None = None) -> ProviderResponse:
        """``POST jobs/interactiveSession`` with one SHELL item, as Core sends it; the answer as it is."""
        return await self.open_session(job, "SHELL", rank, username=username)

    async def open_session(
        self, job: Job, session_type: str, rank: int = 0, *, target: str | None = None, username: str | None = None
    ) -> ProviderResponse:
        """``POST jobs/interactiveSession`` with one item (SHELL, WEB or VNC), as Core sends it; the answer as it is."""
        item = {"job": dump(job), "rank": rank, "sessionType": session_type, "target": target}
        return await self.call_provider(
            "POST", "jobs/interactiveSession", {"items": [item]}, username or _owner_of([job])
        )

    async def open_terminal_in_folder(self, username: str, folder: str) -> ProviderResponse:
        """``POST jobs/openTerminalInFolder`` for one UCloud folder (``/<drive id>/path``)."""
        return await self.call_provider("POST", "jobs/openTerminalInFolder", {"items": [{"folder": folder}]}, username)

    def shell_url(self, session: Mapping[str, Any], username: str) -> str:
        """The socket the browser opens for an OpenSession of type shell (FE Shell.tsx): no Core JWT."""
        hint = base64.urlsafe_b64encode(username.encode()).decode().rstrip("=")
        base = f"{session['domainOverride']}/ucloud/{self.provider_id}/websocket"
        return f"{base}?session={session['sessionIdentifier']}&usernameHint={hint}"

    # --- the browser's side of transfers ---

    async def upload(
        self,
        upload: FilesCreateUploadResponseItem,
        data: bytes | Path,
        username: str,
        *,
        chunk_size: int = WEB_CLIENT_CHUNK_BYTES,
        offset: int = 0,
    ) -> BrowserResponse:
        """Send ``data[offset:]`` to a CHUNKED endpoint as the web client does, chunk after chunk, no JWT.

        ``data`` may be a file, read one chunk at a time (so a test can upload more than it
        wants to hold). Stops at the first answer that is not a success and returns it;
        otherwise the last one.
        """
        read = _chunk_reader(data, chunk_size)
        total = await asyncio.to_thread(os.path.getsize, data) if isinstance(data, Path) else len(data)
        headers = {
            CHUNKED_TOKEN_HEADER: upload.token,
            CHUNKED_TOTAL_SIZE_HEADER: str(total),
            USERNAME_HEADER: encode_username(username),
        }
        answer = BrowserResponse(200, {}, b"")
        while True:
            chunk = await read(offset)
            answer = await self.browser_request(
                "POST", upload.endpoint, {**headers, CHUNKED_OFFSET_HEADER: str(offset)}, chunk
            )
            offset += len(chunk)
            if not answer.ok or offset >= total:
                return answer

    async def upload_folder(
        self, upload: FilesCreateUploadResponseItem, files: Sequence[LocalFile], **options: Any
    ) -> FolderUploadResult:
        """Send ``files`` to a WEBSOCKET_V2 endpoint as the web client does (``folder_upload_client``), no JWT."""
        if upload.protocol != "WEBSOCKET_V2":
            raise ValueError(f"a folder upload speaks WEBSOCKET_V2; the endpoint speaks {upload.protocol}")
        return await upload_folder(upload.endpoint, files, **options)

    async def upload_progress(self, upload: FilesCreateUploadResponseItem, username: str) -> BrowserResponse:
        """``GET`` the CHUNKED endpoint with only the token: how far the upload got (to resume it)."""
        headers = {CHUNKED_TOKEN_HEADER: upload.token, USERNAME_HEADER: encode_username(username)}
        return await self.browser_request("GET", upload.endpoint, headers)

    async def download(self, endpoint: str, headers: Mapping[str, str] | None = None) -> BrowserResponse:
        """GET a download endpoint as the browser does (Range and the like in ``headers``)."""
        return await self.browser_request("GET", endpoint, headers or {})

    async def download_digest(self, endpoint: str) -> tuple[int, int, str]:
        """GET a download endpoint, hashing the body as it arrives: ``(status, size, sha256 hex)``."""
        digest, size = hashlib.sha256(), 0
        async with aiohttp.ClientSession() as session, session.get(endpoint) as response:
            async for piece in response.content.iter_chunked(1 << 20):
                digest.update(piece)
                size += len(piece)
            return response.status, size, digest.hexdigest()

    async def browser_request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None = None
    ) -> BrowserResponse:
        """A request as a browser sends it to a transfer endpoint: no Core JWT."""
        self._session = self._session or self._provider_session()
        async with self._session.request(method, url, headers=dict(headers), data=body) as response:
            return BrowserResponse(response.status, dict(response.headers), await response.read())

    def make_job(
        self,
        job_id: str,
        owner: str,
        application: NameAndVersion | tuple[str, str] = DEFAULT_APPLICATION,
        parameters: Mapping[str, ParameterInput] | None = None,
        product: ProductReference | None = None,
        **options: Any,
    ) -> Job:
        """``make_job()`` with this stand-in's provider id and its applications."""
        options.setdefault("provider", self.provider_id)
        options.setdefault("applications", self.applications)
        return make_job(job_id, owner, application, parameters, product, **options)


def _json_or_text(text: str) -> Any:
    """A provider's answer body: JSON when it parses (whatever the content type), else the text."""
    if not text:
        return None
    try:
        return json_lib.loads(text)
    except ValueError:
        return text


def _job_ids(body: Any) -> tuple[str, ...]:
    """The ids of the items of a bulk jobs request (``{"items": [{"id": ...}, ...]}``); () for other bodies."""
    items = body.get("items") if isinstance(body, dict) else None
    if not isinstance(items, list):
        return ()
    return tuple(str(item["id"]) for item in items if isinstance(item, dict) and "id" in item)


def _owner_of(jobs: Sequence[Job]) -> str | None:
    """Core calls the provider on behalf of the job's owner."""
    if not jobs or not jobs[0].owner.created_by:
        return None
    return jobs[0].owner.created_by


def _parse_ok(response: ProviderResponse, model: type[M]) -> M:
    response.raise_for_status()
    return model.model_validate(response.body if response.body is not None else {})


# --- realistic jobs -----------------------------------------------------------

ParameterInput = AppParameterValue | str | bool | int | float

# Core adds this parameter to every job it sends, declared by no application; its value is
# "0ms" unless the user turned job reports on (then "250ms" or the user's rate) and is kept
# when the user set it (core2 orchestrator/job.go, jobMetricSampleRateParam).
METRIC_SAMPLE_RATE = "ucMetricSampleRate"
METRIC_SAMPLE_RATE_OFF = "0ms"


def as_parameter_value(value: ParameterInput) -> AppParameterValue:
    """Wrap a plain Python value the way the UCloud web client would send it."""
    if isinstance(value, AppParameterValue):
        return value
    if isinstance(value, bool):  # before int: bool is an int
        return AppParameterValue.boolean(value)
    if isinstance(value, int):
        return AppParameterValue.integer(value)
    if isinstance(value, float):
        return AppParameterValue.floating_point(value)
    return AppParameterValue.text(value)


def compute_product(reference: ProductReference, cpu: int = 1, memory_in_gigs: int = 4) -> ProductV2:
    """A Slurm-style compute product accounted in core-minutes."""
    return ProductV2(
        type="compute",
        category=ProductCategory(
            name=reference.category,
            provider=reference.provider,
            product_type="COMPUTE",
            accounting_unit=AccountingUnit(name="Core", name_plural="Cores", display_frequency_suffix=True),
            accounting_frequency="PERIODIC_MINUTE",
        ),
        name=reference.id,
        description="A compute product",
        product_type="COMPUTE",
        price=cpu,
        cpu=cpu,
        memory_in_gigs=memory_in_gigs,
    )


def make_job(
    job_id: str,
    owner: str,
    application: NameAndVersion | tuple[str, str] = DEFAULT_APPLICATION,
    parameters: Mapping[str, ParameterInput] | None = None,
    product: ProductReference | None = None,
    *,
    time_allocation: SimpleDuration | None = None,
    provider: str = "ucim",
    project: str | None = None,
    name: str = "",
    replicas: int = 1,
    resources: Sequence[AppParameterValue] | None = None,
    labels: Mapping[str, str] | None = None,
    created_at: int | None = None,
    resolved_application: Application | None = None,
    resolved_product: ProductV2 | None = None,
    applications: ApplicationStore | None = None,
    check_parameters: bool = True,
) -> Job:
    """A job as Core sends it to ``POST /ucloud/<id>/jobs``: resolved application, product and support included.

    The application is resolved from ``applications`` (the library when None) unless ``resolved_application``
    is given; one Core does not hold is a ValueError, as are parameter values Core would refuse for it (an
    undeclared name, another type, a mandatory one missing), unless ``check_parameters`` is False (to send what
    Core never would, for a provider's own defences). With no ``time_allocation``, the job asks for what the web
    client fills in from the application's tool; Core itself passes on null when a client sends none (set
    ``specification.time_allocation = None`` on the job for that).
    """
    if isinstance(application, NameAndVersion):
        app_ref = application
    else:
        app_ref = NameAndVersion(name=application[0], version=application[1])
    if resolved_application is None:
        store = ApplicationStore.with_library() if applications is None else applications
        resolved_application = store.resolve(app_ref)
    product = product or ProductReference(id="cpu-1", category="cpu", provider=provider)
    values = {key: as_parameter_value(value) for key, value in (parameters or {}).items()}
    # Not ucMetricSampleRate: a user may set it where the provider declares it (dynamic parameters, not modelled).
    refusal = parameter_refusal(resolved_application, {k: v for k, v in values.items() if k != METRIC_SAMPLE_RATE})
    if check_parameters and refusal is not None:
        raise ValueError(f"{refusal} ({app_ref.name}@{app_ref.version}; Core refuses the job with 400)")
    time_allocation = time_allocation or requested_time(resolved_application)
    resolved_product = resolved_product or compute_product(product)
    support = JobSupport(product=product, native=UniversalBackendSupport(enabled=True, logs=True))
    specification = JobSpecification(
        product=product,
        labels=dict(labels or {}),  # Core writes {} and [] where the user sent none
        application=app_ref,
        name=name,
        replicas=replicas,
        parameters=values,
        resources=list(resources or []),
        time_allocation=time_allocation,
    )
    resolved_support = ResolvedSupport[JobSupport](
        product=resolved_product, support=support, features=["jobs.native.enabled", "jobs.native.logs"]
    )
    exported = _exported_parameters(specification, resolved_product, resolved_support)
    # Core adds its own parameter after it stored the user's request (core2 job.go JobCreate).
    specification.parameters = {METRIC_SAMPLE_RATE: AppParameterValue.text(METRIC_SAMPLE_RATE_OFF)} | values
    return Job(
        id=job_id,
        created_at=created_at if created_at is not None else now_ms(),
        owner=ResourceOwner(created_by=owner, project=project),
        permissions=ResourcePermissions(myself=[], others=[]),  # what core2 sent (tests/unit/fixtures)
        updates=[],
        specification=specification,
        status=JobStatus(
            state=JobState.IN_QUEUE,
            job_parameters_json=exported,
            resolved_application=resolved_application,
            resolved_product=resolved_product,
            resolved_support=resolved_support,
        ),
    )


def instance_application(name: str, version: str = "1") -> dict[str, Any]:
    """A library application as the gateway keeps it in a UCloudJob and the operator sends it to an instance."""
    return job_application(make_job("0", "alice", (name, version), check_parameters=False)).to_dict()


def _exported_parameters(
    spec: JobSpecification, product: ProductV2, support: ResolvedSupport[JobSupport]
) -> dict[str, Any]:
    """``status.jobParametersJson``: the request as the user made it, as Core stores it."""
    wire = dump(spec)
    request = {
        "application": wire["application"],
        "product": wire["product"],
        "name": spec.name,
        "replicas": spec.replicas,
        "parameters": wire["parameters"],
        "resources": wire["resources"],
        "timeAllocation": wire["timeAllocation"],
        "resolvedProduct": dump(product),
        "resolvedSupport": dump(support),
        "allowDuplicateJob": False,
        "sshEnabled": False,
    }
    return {
        "siteVersion": 3,
        "request": request,
        "resolvedResources": {"ingress": None},
        "machineType": {"cpu": product.cpu, "memoryInGigs": product.memory_in_gigs},
    }


# --- the Core endpoints (server side) -----------------------------------------


class _CoreHttpError(Exception):
    """Answer the request with ``status`` and the protocol's error envelope."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


def _error_response(status: int, why: str) -> web.Response:
    return web.json_response(error_body(status, why), status=status)


def _ok(model: BaseModel | None = None) -> web.Response:
    return web.json_response(dump(model) if model is not None else {})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _error_envelope(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error, ours or aiohttp's (404, 405, ...), leaves in the protocol's envelope."""
    try:
        return await handler(request)
    except _CoreHttpError as refusal:
        return _error_response(refusal.status, refusal.why)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return _error_response(error.status, error.reason)


@web.middleware
async def _injected_failures(request: web.Request, handler: Handler) -> web.StreamResponse:
    core = request.app[CORE_STANDIN]
    core.record.requests[request.path] += 1
    rule = core.failures.take(request.path)
    if rule is None:
        return await handler(request)
    if rule.mode == "disconnect":
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=rule.status)  # never reaches the client
    return _error_response(rule.status, "Injected failure")


def _require_provider(request: web.Request) -> None:
    """Accept only the access tokens this Core minted for its provider, as Core's auth does."""
    core = request.app[CORE_STANDIN]
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise _CoreHttpError(401, "Unauthorized")
    try:
        claims = core.keys.verify(token)
    except jwt.InvalidTokenError:
        raise _CoreHttpError(401, "Unauthorized") from None
    if claims.get("role") != "PROVIDER" or claims.get("sub") != PROVIDER_SUBJECT_PREFIX + core.provider_id:
        raise _CoreHttpError(403, "Forbidden")


async def _read_json(request: web.Request) -> Any:
    if not request.can_read_body:
        raise _CoreHttpError(400, "No request body found")
    try:
        return await request.json()
    except ValueError:
        raise _CoreHttpError(400, "Invalid request supplied") from None


def _validate(model: type[M], raw: Any) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise _CoreHttpError(400, f"Invalid request supplied: {where}: {first['msg']}") from None


_JOB_UPDATE_KEYS = frozenset(dump(JobUpdate(timestamp=0)))


def _check_every_update_key_written(raw: Any) -> None:
    items = (raw.get("items") or []) if isinstance(raw, dict) else []
    for item in items:
        update = item.get("update") if isinstance(item, dict) else None
        missing = sorted(_JOB_UPDATE_KEYS - set(update)) if isinstance(update, dict) else []
        if missing:
            raise _CoreHttpError(400, f"Invalid request supplied: JobUpdate without keys {missing} (Go writes null)")


async def _refresh(request: web.Request) -> web.Response:
    core = request.app[CORE_STANDIN]
    body = _validate(BulkRequest[RefreshTokenItem], await _read_json(request))
    tokens = []
    for item in body.items:
        if not hmac.compare_digest(item.refresh_token.encode(), core.refresh_token.encode()):
            raise _CoreHttpError(401, "Unauthorized")
        tokens.append(AccessTokenAndCsrf(access_token=core.mint_provider_token()))
        core.record.refresh_count += 1
    return _ok(BulkResponse[AccessTokenAndCsrf](responses=tokens))


async def _job_update(request: web.Request) -> web.Response:
    core = request.app[CORE_STANDIN]
    _require_provider(request)
    raw = await _read_json(request)
    if core.strict_wire:
        _check_every_update_key_written(raw)
    body = _validate(BulkRequest[JobUpdateItem], raw)
    for item in body.items:
        job = core.jobs.get(item.id)
        if job is not None and item.update.new_time_allocation is not None:
            # core2 keeps the new limit as the job's timeAllocation (SimpleDurationFromMillis, whose seconds are
            # always 0): the job it sends next carries it.
            millis = item.update.new_time_allocation
            allocation = SimpleDuration(hours=millis // 3_600_000, minutes=millis % 3_600_000 // 60_000, seconds=0)
            specification = job.specification.model_copy(update={"time_allocation": allocation})
            core.jobs[item.id] = job.model_copy(update={"specification": specification})
    await core.record.add_job_updates(body.items)
    return _ok()


async def _retrieve_job(request: web.Request) -> web.Response:
    """``GET /api/jobs/control/retrieve``: the job as Core holds it, with the updates it received."""
    core = request.app[CORE_STANDIN]
    _require_provider(request)
    job_id = request.query.get("id", "")
    job = core.jobs.get(job_id)
    if job is None:
        raise _CoreHttpError(404, f"no job {job_id!r}")
    include_updates = request.query.get("includeUpdates") == "true"
    updates = core.record.updates_for(job_id) if include_updates else None
    return _ok(job.model_copy(update={"updates": updates}))


async def _register_products(request: web.Request) -> web.Response:
    core = request.app[CORE_STANDIN]
    _require_provider(request)
    body = _validate(BulkRequest[ProductV2], await _read_json(request))
    core.record.products.extend(body.items)
    return _ok()


async def _register_drives(request: web.Request) -> web.Response:
    """``POST /api/files/collections/control/register``: Core's ids, in order; 409 for a providerGeneratedId it has."""
    core = request.app[CORE_STANDIN]
    _require_provider(request)
    body = _validate(BulkRequest[ProviderRegisteredResource[DriveSpecification]], await _read_json(request))
    try:
        ids = core.drives.register(body.items)
    except DriveRefusedError as refusal:
        raise _CoreHttpError(refusal.status, refusal.why) from None
    return _ok(BulkResponse[FindByStringId](responses=[FindByStringId(id=drive_id) for drive_id in ids]))


async def _browse_drives(request: web.Request) -> web.Response:
    """``GET /api/files/collections/control/browse``, with ``filterProviderIds``, ``itemsPerPage`` and ``next``."""
    core = request.app[CORE_STANDIN]
    _require_provider(request)
    wanted = request.query.get("filterProviderIds")
    provider_ids = {item for item in wanted.split(",") if item} if wanted else None
    try:
        items_per_page = int(request.query.get("itemsPerPage") or 0)
    except ValueError:
        raise _CoreHttpError(400, "Invalid request supplied") from None
    return _ok(core.drives.browse(provider_ids, items_per_page, request.query.get("next")))


async def _retrieve_drive(request: web.Request) -> web.Response:
    """``GET /api/files/collections/control/retrieve?id=<drive id>``: the drive, with its providerGeneratedId."""
    core = request.app[CORE_STANDIN]
    _require_provider(request)
    try:
        return web.json_response(core.drives.retrieve(request.query.get("id", "")))
    except DriveRefusedError as refusal:
        raise _CoreHttpError(refusal.status, refusal.why) from None


async def _upload_application(request: web.Request) -> web.Response:
    """``PUT /api/hpc/apps/upload``: a raw YAML body, as Core takes it (from admins only there; not checked here)."""
    core = request.app[CORE_STANDIN]
    try:
        text = (await request.read()).decode()
    except UnicodeDecodeError:
        raise _CoreHttpError(400, "Invalid yaml supplied: yaml: the document is not UTF-8") from None
    try:
        core.upload_application(text)
    except ApplicationRefusedError as refusal:
        raise _CoreHttpError(refusal.status, refusal.why) from None
    return _ok()


async def _report_usage(request: web.Request) -> web.Response:
    """``POST /api/accounting/v2/reportUsage``: one bool per item, True while the wallet is not locked."""
    core = request.app[CORE_STANDIN]
    _require_provider(request)
    raw = await _read_json(request)
    try:
        answers = await core.accounting.report_usage(raw)
    except UsageRefusedError as refusal:
        raise _CoreHttpError(refusal.status, refusal.why) from None
    return _ok(BulkResponse[bool](responses=answers))


async def _notifications(request: web.Request) -> web.StreamResponse:
    """The accounting event stream: a websocket that authenticates inside the stream, not over HTTP."""
    return await request.app[CORE_STANDIN].accounting.notifications(request)


async def _drop_event_streams(app: web.Application) -> None:
    # Open websockets would hold up the runner's shutdown until its timeout.
    await app[CORE_STANDIN].accounting.disconnect_sessions()


async def _approve_connection(request: web.Request) -> web.Response:
    core = request.app[CORE_STANDIN]
    _require_provider(request)
    body = _validate(FindByUsername, await _read_json(request))
    core.record.approved_connections.append(body.username)
    return _ok()


async def _clear_connection(request: web.Request) -> web.Response:
    core = request.app[CORE_STANDIN]
    _require_provider(request)
    body = _validate(FindByUsername, await _read_json(request))
    await core.record.add_cleared_connection(body.username)
    return _ok()


async def _state(request: web.Request) -> web.Response:
    """Read-only view of what was recorded, for the demo (not a Core endpoint)."""
    core = request.app[CORE_STANDIN]
    record = core.record
    return web.json_response(
        {
            "refreshCount": record.refresh_count,
            "jobUpdates": [dump(item) for item in record.job_updates],
            "products": [dump(product) for product in record.products],
            "approvedConnections": record.approved_connections,
            "clearedConnections": record.cleared_connections,
            "drives": [dump(drive) for drive in request.app[CORE_STANDIN].drives.drives.values()],
            "applications": [f"{name}@{version}" for name, version in core.applications.applications],
        }
    )


CORE_STANDIN = web.AppKey("ucim_core_standin", CoreStandIn)


def init_app(core: CoreStandIn) -> web.Application:
    """The Core endpoints a provider calls, backed by ``core``."""
    app = web.Application(middlewares=[_error_envelope, _injected_failures])
    app[CORE_STANDIN] = core
    app.router.add_post("/auth/providers/refresh", _refresh)
    app.router.add_post("/api/jobs/control/update", _job_update)
    app.router.add_get("/api/jobs/control/retrieve", _retrieve_job)
    app.router.add_post("/api/products/v2", _register_products)
    app.router.add_post("/api/providers/integration/control/approveConnection", _approve_connection)
    app.router.add_post("/api/providers/integration/control/clearConnection", _clear_connection)
    app.router.add_post("/api/files/collections/control/register", _register_drives)
    app.router.add_get("/api/files/collections/control/browse", _browse_drives)
    app.router.add_get("/api/files/collections/control/retrieve", _retrieve_drive)
    app.router.add_put("/api/hpc/apps/upload", _upload_application)
    app.router.add_get(NOTIFICATIONS_PATH, _notifications)
    app.router.add_post(REPORT_USAGE_PATH, _report_usage)
    # Not /api/accounting/v2/registerProviderGift: core2 has no handler for it, so it is a 404 there too.
    app.router.add_get("/_standin/state", _state)
    app.on_shutdown.append(_drop_event_streams)
    return app


# --- running as a process -----------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ucim.testing.core_standin", description="A UCloud/Core stand-in for tests and the demo."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--provider-id", required=True)
    parser.add_argument("--refresh-token", required=True, help="the refresh token the provider is configured with")
    parser.add_argument("--private-key", type=Path, help="PEM private key; created there when missing")
    parser.add_argument("--write-public-key", type=Path, help="write the public key here for the provider")
    parser.add_argument(
        "--public-key-format",
        choices=["ucloud", "pem"],
        default="ucloud",
        help="ucloud: base64 DER without headers (ucloud_key.pub); pem: ucloud_crt.pem style",
    )
    parser.add_argument("--provider-url", help="the provider's public base URL (for calls to it)")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    keys = CoreKeys.load_or_create(args.private_key) if args.private_key else CoreKeys.generate()
    async with CoreStandIn(args.provider_id, args.refresh_token, keys=keys, provider_url=args.provider_url) as core:
        if args.write_public_key:
            core.write_public_key(args.write_public_key, args.public_key_format)
        url = await core.start(args.host, args.port)
        print(f"UCloud/Core stand-in for provider {args.provider_id!r} listening on {url}", flush=True)
        if args.write_public_key:
            print(f"public key written to {args.write_public_key}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)


def main(argv: Sequence[str] | None = None) -> None:
    asyncio.run(_serve(_parse_args(argv)))


if __name__ == "__main__":
    main()
