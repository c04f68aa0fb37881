"""Web interfaces' host names and session tokens: what the gateway reads back is what it made, and nothing else."""

from __future__ import annotations

import time

import jwt
import pytest
from pydantic import SecretStr, ValidationError

from ucim.common.web_sessions import WebTarget, is_web_token
from ucim.gateway.settings import GatewaySettings
from ucim.gateway.web_hosts import WebHost, WebHosts, hostname_safe
from ucim.gateway.web_tokens import WebTokens
from ucim.user_sidecar.one_time_tokens import OneTimeTokens

KEY = b"k" * 32
TARGET = WebTarget(job_id="4821", rank=0, node="c1", port=23817)


def test_a_host_names_its_job_rank_and_target() -> None:
    hosts = WebHosts("app-", ".apps.example.com")
    assert hosts.host("4821", 0) == "app-4821-0.apps.example.com"
    assert hosts.host("4821", 2, "Jupyter Lab") == "app-4821-2-jupyter-lab.apps.example.com"
    assert hosts.parse("app-4821-0.apps.example.com") == WebHost("4821", 0, None)
    assert hosts.parse("APP-4821-2-jupyter-lab.apps.example.com:8443") == WebHost("4821", 2, "jupyter-lab")
    assert hosts.mask == "app-*.apps.example.com"


@pytest.mark.parametrize(
    "host",
    [
        "apps.example.com", "app-.apps.example.com", "app-4821.apps.example.com", "app-4821-x.apps.example.com",
        "app-4821-0.apps.example.com.evil.org", "evil-app-4821-0.apps.example.com", "app-4821-0-.apps.example.com",
        "app-4821-0-a_b.apps.example.com", "app-4821-0.other.example.com", "app-48/21-0.apps.example.com", "",
        "app-4821-0.apps.example.com:1:2", "app-" + "9" * 41 + "-0.apps.example.com",
    ],
)  # fmt: skip
def test_a_forged_host_names_nothing(host: str) -> None:
    assert WebHosts("app-", ".apps.example.com").parse(host) is None


def test_the_suffix_must_be_a_domain() -> None:
    with pytest.raises(ValueError, match="must start with"):
        WebHosts("app-", "apps.example.com")


def test_hostname_safe_is_im2s() -> None:
    assert hostname_safe("  Jupyter  Lab! ") == "jupyter-lab"
    assert hostname_safe("Ærø desk-") == "r-desk"  # NFKD keeps no Æ/ø
    assert hostname_safe("café") == "cafe"


def test_cookie_names_are_im2s() -> None:
    assert WebHost("12", 0, None).cookie_name == "ucloud-compute-session-12-0-"
    assert WebHost("12", 1, "lab").cookie_name == "ucloud-compute-session-12-1--lab"


def test_a_token_checks_as_what_it_was_made() -> None:
    tokens = WebTokens(KEY, "ucim")
    token, expires = tokens.make("web", "alice", TARGET, 60)
    claims = tokens.check("web", token)
    assert claims is not None and claims.user == "alice" and claims.target == TARGET
    assert expires - 61 <= time.time() <= expires
    assert tokens.check("vnc", token) is None  # a cookie is no VNC token
    assert WebTokens(b"x" * 32, "ucim").check("web", token) is None  # another key
    assert WebTokens(KEY, "other").check("web", token) is None  # another issuer


def test_expired_tampered_and_unsigned_tokens_are_refused() -> None:
    tokens = WebTokens(KEY, "ucim")
    expired = jwt.encode({"iss": "ucim", "aud": "web", "sub": "alice", "exp": 1, "tgt": TARGET.model_dump()}, KEY)
    assert tokens.check("web", expired) is None
    token, _ = tokens.make("web", "alice", TARGET, 60)
    head, body, signature = token.split(".")
    assert tokens.check("web", f"{head}.{body}.{signature[:-2]}AA") is None
    unsigned = jwt.encode({"iss": "ucim", "aud": "web", "sub": "bob", "exp": 2**40, "tgt": {}}, "", "none")
    assert tokens.check("web", unsigned) is None
    bad_target = jwt.encode({"iss": "ucim", "aud": "web", "sub": "bob", "exp": 2**40, "tgt": {"port": 0}}, KEY)
    assert tokens.check("web", bad_target) is None
    for garbage in ("", "a.b.c", "x" * 5000):
        assert tokens.check("web", garbage) is None


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        WebTokens(b"short", "ucim")


def test_web_grant_tokens_have_im2s_shape_and_are_used_once() -> None:
    now = [0.0]
    tokens: OneTimeTokens[WebTarget] = OneTimeTokens(token_bytes=12, seconds=60, clock=lambda: now[0])
    token = tokens.make(TARGET)
    assert is_web_token(token)
    assert tokens.claim(token) == TARGET
    assert tokens.claim(token) is None
    late = tokens.make(TARGET)
    now[0] = 61.0
    assert tokens.claim(late) is None
    assert not is_web_token("1" * 20 + "g" * 24)


def test_web_interfaces_need_a_session_key() -> None:
    with pytest.raises(ValidationError, match="WEB_SESSION_KEY must be 32 characters"):
        GatewaySettings(web_suffix=".apps.example.com", web_session_key=SecretStr("short"))
    settings = GatewaySettings(web_suffix=".apps.example.com", web_session_key=SecretStr("k" * 32))
    assert settings.web_interfaces_enabled and settings.vnc_enabled
    vnc_only = GatewaySettings(web_session_key=SecretStr("k" * 32))
    assert vnc_only.vnc_enabled and not vnc_only.web_interfaces_enabled
    assert not GatewaySettings().vnc_enabled
