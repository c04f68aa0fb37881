"""The credentials of web and VNC sessions: signed, so that any gateway replica checks them without state.

A web session's cookie and a VNC session's URL token are JWTs (HS256, PyJWT) made with the
gateway's web session key (shared by the replicas, a Secret of the chart). Each says whose
session it is, which interface it opens, where that interface is served (as the owner's
instance found it when Core asked), and until when. ``aud`` keeps the two kinds apart: a VNC
token is no cookie, and the reverse.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final, Literal

import jwt

from ucim.common.web_sessions import WebTarget

ALGORITHM: Final = "HS256"
Kind = Literal["web", "vnc"]


@dataclass(frozen=True)
class SessionClaims:
    """A session's owner and its interface."""

    user: str
    target: WebTarget
    expires: int  # epoch seconds


# Tokens checked lately, by kind and text: a browser sends the same cookie with every request of a page,
# and checking its signature again cost a tenth of the gateway's time per request (PyJWT, ~50 µs).
CHECKED_CACHE: Final = 4096


class WebTokens:
    def __init__(self, key: bytes, issuer: str) -> None:
        if len(key) < 32:
            raise ValueError("the web session key must be at least 32 bytes")
        self._key = key
        self._issuer = issuer
        self._checked: OrderedDict[tuple[Kind, str], SessionClaims | None] = OrderedDict()

    def make(self, kind: Kind, user: str, target: WebTarget, seconds: int) -> tuple[str, int]:
        """The token, and when it expires (epoch seconds)."""
        expires = int(time.time()) + seconds
        claims = {
            "iss": self._issuer,
            "aud": kind,
            "sub": user,
            "exp": expires,
            "tgt": target.model_dump(by_alias=True, exclude_none=True),
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM), expires

    def check(self, kind: Kind, token: str) -> SessionClaims | None:
        """The claims of a valid, unexpired token of ``kind``; None for anything else."""
        key = (kind, token)
        if key in self._checked:
            self._checked.move_to_end(key)
            claims = self._checked[key]
            return claims if claims is not None and claims.expires > time.time() else None
        claims = self._verify(kind, token)
        self._checked[key] = claims
        if len(self._checked) > CHECKED_CACHE:
            self._checked.popitem(last=False)
        return claims

    def _verify(self, kind: Kind, token: str) -> SessionClaims | None:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                audience=kind,
                issuer=self._issuer,
                options={"require": ["exp", "sub", "aud", "iss"]},
            )
            return SessionClaims(claims["sub"], WebTarget.model_validate(claims["tgt"]), int(claims["exp"]))
        except (jwt.InvalidTokenError, KeyError, ValueError, TypeError):
            return None
