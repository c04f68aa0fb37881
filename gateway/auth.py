"""Verification of UCloud/Core's JWT and of the acting user.

Core signs an RS256 JWT for every call (sub ``_UCloud``, role ``SERVICE``,
issuer ``cloud.sdu.dk``); the acting end user, when there is one, travels
base64-encoded in the ``UCloud-Username`` header or the ``usernameHint`` query
parameter. A header without a valid JWT counts for nothing.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

from ucim.common.protocol import decode_username

USERNAME_HEADER = "UCloud-Username"
USERNAME_HINT = "usernameHint"


class AuthError(Exception):
    """The request is not from Core; the message says why."""


@dataclass(frozen=True)
class CoreVerifier:
    public_key: RSAPublicKey
    issuer: str
    leeway_seconds: int = 30

    def verify(self, authorization: str | None) -> dict[str, Any]:
        """The claims of a valid Core service token, or AuthError."""
        if not authorization or not authorization.startswith("Bearer "):
            raise AuthError("missing bearer token")
        token = authorization.removeprefix("Bearer ").strip()
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.public_key,
                algorithms=["RS256"],
                issuer=self.issuer,
                leeway=self.leeway_seconds,
                options={"require": ["exp", "iss", "sub"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError as error:
            raise AuthError("token expired") from error
        except jwt.InvalidTokenError as error:
            raise AuthError(f"invalid token: {error}") from error
        if claims.get("sub") != "_UCloud" or claims.get("role") != "SERVICE":
            raise AuthError("token is not a UCloud service token")
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
        return decode_username(encoded)
    except ValueError as error:
        raise web.HTTPBadRequest(reason=f"invalid {USERNAME_HEADER}: {error}") from error
