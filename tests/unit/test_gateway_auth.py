"""The cache of verified Core tokens: a token seen again skips the signature check, never the clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from ucim.gateway.auth import AuthError, CoreVerifier, VerifiedTokens, load_public_key
from ucim.testing.core_standin import ISSUER, CoreKeys, token_claims

LEEWAY = 30


@pytest.fixture(scope="module")
def keys() -> CoreKeys:
    return CoreKeys.generate()


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tokens whose signature jwt.decode checked, in order."""
    calls: list[str] = []
    real_decode: Callable[..., Any] = jwt.decode

    def counting_decode(token: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(token)
        return real_decode(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    return calls


def verifier_for(keys: CoreKeys, clock: Clock, cache_size: int = 1024) -> CoreVerifier:
    public_key = load_public_key(keys.public_key_pem())
    return CoreVerifier(public_key, ISSUER, LEEWAY, cache_size=cache_size, clock=clock)


def bearer(keys: CoreKeys, **claims: Any) -> str:
    base = token_claims(subject="_UCloud", role="SERVICE", principal_type="service")
    return f"Bearer {keys.sign(base | claims)}"


def refusal(verifier: CoreVerifier, authorization: str) -> str:
    with pytest.raises(AuthError) as error:
        verifier.verify(authorization)
    return str(error.value)


def test_a_token_seen_again_skips_the_signature_check(keys: CoreKeys, clock: Clock, decodes: list[str]) -> None:
    verifier = verifier_for(keys, clock)
    token = bearer(keys)
    first = verifier.verify(token)
    assert first["sub"] == "_UCloud"
    assert verifier.verify(token) == first
    assert verifier.verify(f"{token}  ") == first  # the key is the token, as the header is read
    assert len(decodes) == 1


def test_the_claims_handed_out_are_copies(keys: CoreKeys, clock: Clock) -> None:
    verifier = verifier_for(keys, clock)
    token = bearer(keys)
    verifier.verify(token)["sub"] = "edited by a handler"
    assert verifier.verify(token)["sub"] == "_UCloud"


def test_a_cached_token_expires_at_the_same_moment_as_a_fresh_one(
    keys: CoreKeys, clock: Clock, decodes: list[str]
) -> None:
    verifier = verifier_for(keys, clock)
    expires = int(clock.now) + 600
    token = bearer(keys, exp=expires)
    verifier.verify(token)
    clock.now = expires + LEEWAY - 0.5  # still inside the leeway
    verifier.verify(token)
    clock.now = expires + LEEWAY  # PyJWT: expired once exp <= now - leeway
    assert refusal(verifier, token) == "token expired"
    # The same words as for a token that was already expired when first seen.
    already_expired = bearer(keys, iat=int(time.time()) - 1000, exp=int(time.time()) - LEEWAY - 1)
    assert refusal(verifier, already_expired) == "token expired"
    assert len(decodes) == 2
    # The expired token left the cache: the clock turned back, it is verified afresh.
    clock.now = expires
    verifier.verify(token)
    assert len(decodes) == 3


def test_a_cached_token_is_checked_against_nbf_and_iat_too(keys: CoreKeys, clock: Clock) -> None:
    verifier = verifier_for(keys, clock)
    now = int(clock.now)
    fresh_nbf = refusal(verifier, bearer(keys, nbf=int(time.time()) + 600))
    assert fresh_nbf == "invalid token: The token is not yet valid (nbf)"
    token = bearer(keys, iat=now - 1000, nbf=now, exp=now + 600)
    verifier.verify(token)
    clock.now = now - LEEWAY - 1
    assert refusal(verifier, token) == fresh_nbf
    fresh_iat = refusal(verifier, bearer(keys, iat=int(time.time()) + 600))
    assert fresh_iat == "invalid token: The token is not yet valid (iat)"
    clock.now = now
    other = bearer(keys, iat=now, exp=now + 600)
    verifier.verify(other)
    clock.now = now - LEEWAY - 1
    assert refusal(verifier, other) == fresh_iat


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ({"exp": "{soon}"}, "the exp claim must be a number of seconds (a NumericDate), not a string"),
        ({"nbf": "0"}, "the nbf claim must be a number of seconds (a NumericDate), not a string"),
        ({"iat": True}, "the iat claim must be a number of seconds (a NumericDate), not a boolean"),
        # What int() cannot convert, PyJWT refuses itself.
        ({"exp": "tomorrow"}, "Expiration Time claim (exp) must be an integer."),
        ({"nbf": None}, "Not Before claim (nbf) must be an integer."),
    ],
)
def test_numeric_date_claims_must_be_numbers(keys: CoreKeys, clock: Clock, claims: dict[str, Any], why: str) -> None:
    soon = str(int(time.time()) + 600)
    forged = {name: soon if value == "{soon}" else value for name, value in claims.items()}
    assert refusal(verifier_for(keys, clock), bearer(keys, **forged)) == f"invalid token: {why}"


def test_numeric_dates_may_have_fractions(keys: CoreKeys, clock: Clock) -> None:
    """RFC 7519 allows non-integer NumericDates."""
    now = time.time()
    assert verifier_for(keys, clock).verify(bearer(keys, iat=now - 1.5, nbf=now - 1.5, exp=now + 600.5))


@pytest.mark.parametrize(
    "forge",
    [
        lambda keys: bearer(CoreKeys.generate()),
        lambda keys: bearer(keys, role="USER"),
        lambda keys: bearer(keys, sub="alice"),
        lambda keys: bearer(keys, iss="evil.example"),
        lambda keys: bearer(keys, iat=int(time.time()) - 1000, exp=int(time.time()) - 100),
    ],
    ids=["wrong-key", "wrong-role", "wrong-sub", "wrong-issuer", "expired"],
)
def test_a_refused_token_is_not_cached(
    keys: CoreKeys, clock: Clock, decodes: list[str], forge: Callable[[CoreKeys], str]
) -> None:
    verifier = verifier_for(keys, clock)
    token = forge(keys)
    first = refusal(verifier, token)
    assert refusal(verifier, token) == first
    assert len(decodes) == 2


def test_the_cache_is_bounded_and_forgets_the_least_recently_used(
    keys: CoreKeys, clock: Clock, decodes: list[str]
) -> None:
    verifier = verifier_for(keys, clock, cache_size=3)
    tokens = [bearer(keys, jti=str(i)) for i in range(5)]
    for token in tokens[:3]:
        verifier.verify(token)
    verifier.verify(tokens[0])  # used again: now the most recent
    for token in tokens[3:]:
        verifier.verify(token)
    assert len(decodes) == 5
    decodes.clear()
    for token in [tokens[0], tokens[3], tokens[4]]:
        verifier.verify(token)
    assert decodes == []
    verifier.verify(tokens[1])
    assert decodes == [tokens[1].removeprefix("Bearer ")]


def test_verified_tokens_hold_at_most_their_size() -> None:
    cache = VerifiedTokens(1024)
    for i in range(5000):
        cache.put(f"token-{i}", {"n": i})
    assert len(cache) == 1024
    assert cache.get("token-3975") is None
    assert cache.get("token-3976") == {"n": 3976}
    nothing = VerifiedTokens(0)
    nothing.put("token", {})
    assert len(nothing) == 0


def test_the_positional_constructor_still_works(keys: CoreKeys) -> None:
    verifier = CoreVerifier(load_public_key(keys.public_key_pem()), ISSUER, LEEWAY)
    token = bearer(keys)
    assert verifier.verify(token) == verifier.verify(token)
