"""The gateway's side of shells: the websocket URL Core hands out, and refusals before any instance is asked."""

from __future__ import annotations

import pytest

from tests.support.gateway_files import BASE, GatewayFactory
from ucim.common.shell_protocol import is_token
from ucim.gateway.settings import GatewaySettings
from ucim.gateway.shell import websocket_domain


@pytest.mark.parametrize(
    ("public_url", "domain"),
    [
        ("https://ucim.example.com", "wss://ucim.example.com"),
        ("https://ucim.example.com:443/prefix", "wss://ucim.example.com"),
        ("https://ucim.example.com:8443", "wss://ucim.example.com:8443"),
        ("http://127.0.0.1:8889", "ws://127.0.0.1:8889"),
    ],
)
def test_the_shell_socket_is_on_the_public_url(public_url: str, domain: str) -> None:
    settings = GatewaySettings.model_construct(public_url=public_url)
    assert websocket_domain(settings) == domain


def test_tokens_are_the_instances_shape_only() -> None:
    assert is_token("1" * 19 + "a" * 64)
    assert not is_token("1" * 19 + "A" * 64)
    assert not is_token("1" * 30 + "a" * 64)
    assert not is_token("../" + "a" * 64)


@pytest.mark.parametrize(
    "query",
    [
        "session=x&usernameHint=YWxpY2U",
        "usernameHint=YWxpY2U",
        f"session={'1' * 19}{'a' * 64}",
        "session=1&usernameHint=!",
    ],
)
async def test_a_socket_without_a_token_or_user_is_a_400_without_a_jwt(
    make_gateway: GatewayFactory, query: str
) -> None:
    client = await make_gateway()
    answer = await client.get(f"{BASE}/websocket?{query}")
    assert answer.status == 400
    assert (await answer.json())["why"]
