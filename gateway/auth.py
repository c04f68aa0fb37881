"""Verification of UCloud/Core's JWT and of the acting user.

Core signs an RS256 JWT for every call (sub ``_UCloud``, role ``SERVICE``,
issuer ``cloud.sdu.dk``); the acting end user, when there is one, travels
base64-encoded in the ``UCloud-Username`` header or the ``usernameHint`` query
parameter. A header without a valid JWT counts for nothing.

Core reuses one token for many calls, so the claims of tokens whose signature checked out are
kept (a bounded LRU, :class:`VerifiedTokens`): a token seen again skips the RSA check but not
the time checks, so it is refused the moment it expires, exactly as a fresh one would be.
"""

from __future__ import annotations

import base64
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

from ucim.common.protocol import USERNAME_HEADER, decode_username
from ucim.common.resources import MAX_USERNAME_LENGTH
from ucim.gateway.errors import ProviderError

USERNAME_HINT = "usernameHint"
VERIFIED_TOKENS = 1024


class AuthError(Exception):
    """The request is not from Core; the message says why."""


class VerifiedTokens:
    """The claims of the last ``size`` tokens that passed verification; the least recently used go first.

    Not locked: the gateway verifies on its one event loop, and nothing here awaits.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._claims: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._claims)

    def get(self, token: str) -> dict[str, Any] | None:
        claims = self._claims.get(token)
        if claims is not None:
            self._claims.move_to_end(token)
        return claims

    def put(self, token: str, claims: dict[str, Any]) -> None:
        self._claims[token] = claims
        self._claims.move_to_end(token)
        while len(self._claims) > self.size:
            self._claims.popitem(last=False)

    def drop(self, token: str) -> None:
        self._claims.pop(token, None)


# RFC 7519 §2: a NumericDate is a JSON number. PyJWT converts these claims with int() and so also takes
# "1767225600" or true; Core writes numbers (core2 foundation/auth_providers.go), so anything else is refused.
NUMERIC_DATE_CLAIMS: Final = ("exp", "nbf", "iat")
# What else int() takes; other types PyJWT refuses itself.
_JSON_TYPES: Final = {str: "a string", bool: "a boolean"}


def check_claim_types(claims: dict[str, Any]) -> None:
    """Each NumericDate claim present is a number; jwt.InvalidTokenError names the claim otherwise."""
    for name in NUMERIC_DATE_CLAIMS:
        if name not in claims:
            continue
        value = claims[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            found = _JSON_TYPES.get(type(value), type(value).__name__)
            raise jwt.InvalidTokenError(f"the {name} claim must be a number of seconds (a NumericDate), not {found}")


def check_times(claims: dict[str, Any], now: float, leeway: float) -> None:
    """PyJWT's time checks (iat, nbf, exp, in its order, with its errors) on claims it already decoded."""
    if "iat" in claims and int(claims["iat"]) > now + leeway:
        raise jwt.ImmatureSignatureError("The token is not yet valid (iat)")
    if "nbf" in claims and int(claims["nbf"]) > now + leeway:
        raise jwt.ImmatureSignatureError("The token is not yet valid (nbf)")
    if int(claims["exp"]) <= now - leeway:
        raise jwt.ExpiredSignatureError("Signature has expired")


@dataclass(frozen=True)
class CoreVerifier:
    public_key: RSAPublicKey
    issuer: str
    leeway_seconds: int = 30
    cache_size: int = VERIFIED_TOKENS
    # The clock of the checks on cached tokens; jwt.decode reads the system clock itself.
    clock: Callable[[], float] = field(default=time.time, repr=False, compare=False)
    _verified: VerifiedTokens = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_verified", VerifiedTokens(self.cache_size))

    def verify(self, authorization: str | None) -> dict[str, Any]:
        """The claims of a valid Core service token, or AuthError."""
        if not authorization or not authorization.startswith("Bearer "):
            raise AuthError("missing bearer token")
        token = authorization.removeprefix("Bearer ").strip()
        try:
            claims = self._claims(token)
        except jwt.ExpiredSignatureError as error:
            raise AuthError("token expired") from error
        except jwt.InvalidTokenError as error:
            raise AuthError(f"invalid token: {error}") from error
        return dict(claims)  # a copy: a handler that edits its claims leaves the cached ones alone

    def _claims(self, token: str) -> dict[str, Any]:
        cached = self._verified.get(token)
        if cached is not None:
            try:
                check_times(cached, self.clock(), self.leeway_seconds)
            except jwt.InvalidTokenError:
                self._verified.drop(token)
                raise
            return cached
        claims: dict[str, Any] = jwt.decode(
            token,
            self.public_key,
            algorithms=["RS256"],
            issuer=self.issuer,
            leeway=self.leeway_seconds,
            options={"require": ["exp", "iss", "sub"], "verify_aud": False},
        )
        check_claim_types(claims)
        if claims.get("sub") != "_UCloud" or claims.get("role") != "SERVICE":
            raise AuthError("token is not a UCloud service token")
        self._verified.put(token, claims)
        return claims


def load_public_key(text: str) -> RSAPublicKey:
    """A PEM public key, or the anchor's ``ucloud_key.pub`` form (base64 DER without headers)."""
    text = text.strip()
    key = (
        load_pem_public_key(text.encode())
        if text.startswith("-----BEGIN")
        else load_der_public_key(base64.b64decode("".join(text.split())))
    )
    if not isinstance(key, RSAPublicKey):
        raise TypeError("Core's public key must be an RSA key")
    return key


def read_public_key(path: Path) -> RSAPublicKey:
    return load_public_key(path.read_text())


def acting_username(request: web.Request) -> str | None:
    """The end user a request acts for, from the header or the query hint; None for server calls."""
    encoded = request.headers.get(USERNAME_HEADER) or request.query.get(USERNAME_HINT)
    if not encoded:
        return None
    try:
        username = decode_username(encoded)
    except ValueError as error:
        raise web.HTTPBadRequest(reason=f"invalid {USERNAME_HEADER}: {error}") from error
    return check_username(username, USERNAME_HEADER)


def check_username(username: str, where: str) -> str:
    """A username this provider can keep (the CRDs' limit), or a 400 that says the limit."""
    if len(username) > MAX_USERNAME_LENGTH:
        raise ProviderError(
            400,
            f"the username in {where} is {len(username)} characters long; at most {MAX_USERNAME_LENGTH} are allowed",
        )
    return username
