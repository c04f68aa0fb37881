"""Core's file calls at the gateway: forwarded to the user's instance through the bridge env.ingress.

Kubernetes is faked in memory and the ingress with its instances by ``FakeIngress``, a real
HTTP server, so forwarding, headers and streaming are exercised over real connections.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import SecretStr

from tests.support.gateway_files import BASE, PROVIDER, PUBLIC_URL, Env, GatewayFactory, metric
from ucim.common import instance_api as api
from ucim.common.informer import Informer
from ucim.common.protocol import decode_username, encode_username
from ucim.common.resources import UserInstance
from ucim.gateway.keys import INSTANCES

pytestmark = pytest.mark.relay_loops  # the gateway and the bridge run on uvloop

# --- Core's calls -----------------------------------------------------------------------

FORWARDS = [
    ("POST", "files/browse", api.FILES_BROWSE_PATH),
    ("POST", "files/retrieve", api.FILES_RETRIEVE_PATH),
    ("POST", "files/folder", api.FILES_FOLDER_PATH),
    ("POST", "files/move", api.FILES_MOVE_PATH),
    ("POST", "files/copy", api.FILES_COPY_PATH),
    ("POST", "files/trash", api.FILES_TRASH_PATH),
    ("POST", "files/emptyTrash", api.FILES_EMPTY_TRASH_PATH),
    ("DELETE", "files", api.FILES_DELETE_PATH),
]


@pytest.mark.parametrize(("method", "route", "path"), FORWARDS, ids=[f"{m} {r}" for m, r, _ in FORWARDS])
async def test_core_calls_reach_the_instance_verbatim(
    env: Env,
    method: str,
    route: str,
    path: str,
) -> None:
    name = await env.serve()
    body = b'{"items": [{"id": "/7/a b", "resolvedCollection": {"id": "7", "providerGeneratedId": "home:alice"}}]}'
    response = await env.gateway.request(
        method, f"{BASE}/{route}", data=body, headers={**env.headers(), "Content-Type": "application/json"}
    )
    assert response.status == 200, await response.text()
    seen = env.ingress.last()
    assert (seen.instance, seen.method, seen.path, seen.body) == (name, "POST", path, body)
    assert seen.tunneled
    assert "Authorization" not in seen.headers  # the ingress token opened the tunnel; the instance never sees it
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["Accept-Encoding"] == "identity"
    assert "UCloud-Username" not in seen.headers and "Cookie" not in seen.headers
    assert response.headers["Content-Type"].startswith("application/json")
    if path != api.FILES_BROWSE_PATH:
        assert (await response.json())["echo"] == json.loads(body)


async def test_core_calls_share_a_kept_alive_tunnel_per_instance(env: Env) -> None:
    alice = await env.serve()
    bob = await env.serve("bob")
    for _ in range(3):
        for user in ("alice", "bob"):
            response = await env.gateway.post(f"{BASE}/files/browse", json={}, headers=env.headers(user))
            assert response.status == 200
    assert env.ingress.tunnels_opened == 2
    assert [seen.instance for seen in env.ingress.seen] == [alice, bob] * 3  # each through its own


async def test_a_bridge_without_tunnels_gets_core_calls_the_plain_way(env: Env) -> None:
    env.ingress.tunnels = False  # an older bridge, or a proxy before it that drops Upgrade
    name = await env.serve()
    for _ in range(3):
        response = await env.gateway.post(f"{BASE}/files/folder", json={"items": []}, headers=env.headers())
        assert response.status == 200
        assert (await response.json())["echo"] == {"items": []}
        seen = env.ingress.last()
        assert (seen.instance, seen.path, seen.tunneled) == (name, api.FILES_FOLDER_PATH, False)
    assert env.ingress.upgrades_refused == 1  # asked once, then remembered


async def test_the_instances_refusal_reaches_core_unchanged(env: Env) -> None:
    await env.serve()
    refusal = {"statusCode": 404, "why": "/7/missing does not exist", "errorCode": "", "detailedCode": 0}
    env.ingress.refusals[api.FILES_RETRIEVE_PATH] = (404, refusal)
    response = await env.gateway.post(f"{BASE}/files/retrieve", json={"retrieve": {}}, headers=env.headers())
    assert response.status == 404
    assert await response.json() == refusal


async def test_a_file_call_needs_the_acting_user(env: Env) -> None:
    response = await env.gateway.post(f"{BASE}/files/browse", json={}, headers=env.headers(None))
    assert response.status == 400
    assert "UCloud-Username" in (await response.json())["why"]


async def test_a_file_call_needs_cores_jwt(env: Env) -> None:
    response = await env.gateway.post(
        f"{BASE}/files/browse", json={}, headers={"UCloud-Username": encode_username("alice")}
    )
    assert response.status == 401


async def test_a_user_without_a_ready_instance_gets_449(env: Env) -> None:
    before = metric("ucim_gateway_errors_total", route=f"{BASE}/files/browse", reason="not_ready")
    response = await env.gateway.post(f"{BASE}/files/browse", json={}, headers=env.headers())
    assert response.status == 449
    await env.serve(ready=False)
    response = await env.gateway.post(f"{BASE}/files/browse", json={}, headers=env.headers())
    assert response.status == 449
    assert "integration/init" in (await response.json())["why"]
    assert metric("ucim_gateway_errors_total", route=f"{BASE}/files/browse", reason="not_ready") == before + 2
    assert env.ingress.seen == []


async def test_an_instance_stopped_behind_the_cache_is_a_449_and_forgotten(env: Env) -> None:
    name = await env.serve()
    assert (await env.gateway.post(f"{BASE}/files/folder", json={}, headers=env.headers())).status == 200
    await env.ingress.stop(name)  # stopped while idle; Kubernetes still says Ready for a moment
    assert (await env.gateway.post(f"{BASE}/files/folder", json={}, headers=env.headers())).status == 449
    env.ingress.running.add(name)
    assert (await env.gateway.post(f"{BASE}/files/folder", json={}, headers=env.headers())).status == 200


async def test_with_the_watch_a_call_reads_nothing_from_kubernetes(env: Env) -> None:
    """The endpoint comes from the watched UserInstances: no GET per call (a login storm's many calls)."""
    await env.serve()
    instances = env.gateway.app[INSTANCES]
    watched: Informer[UserInstance] = Informer(env.kube, UserInstance, instances.namespace)  # type: ignore[arg-type]
    name = instances.name_for("alice")
    found = await env.kube.get(UserInstance, instances.namespace, name)
    assert found is not None
    watched.objects[name] = found
    watched.synced.set()
    instances.informer = watched
    gets = 0
    real_get = env.kube.get

    async def counting_get(*args: Any) -> Any:
        nonlocal gets
        gets += 1
        return await real_get(*args)

    env.kube.get = counting_get  # type: ignore[method-assign,assignment]
    for _ in range(5):
        assert (await env.gateway.post(f"{BASE}/files/browse", json={}, headers=env.headers())).status == 200
    assert gets == 0


async def test_an_unreachable_bridge_is_a_502_with_the_reason(env: Env) -> None:
    await env.serve()
    await env.server.close()
    response = await env.gateway.post(f"{BASE}/files/browse", json={}, headers=env.headers())
    assert response.status == 502
    assert "unreachable" in (await response.json())["why"]


async def test_a_wrong_ingress_token_is_a_502_that_names_the_setting(env: Env, make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(ingress_token=SecretStr("not-the-token"))
    await env.serve()
    response = await gateway.post(f"{BASE}/files/browse", json={}, headers=env.headers())
    assert response.status == 502
    assert "UCIM_GATEWAY_INGRESS_TOKEN" in (await response.json())["why"]


@pytest.mark.parametrize(
    ("method", "route", "what"),
    [
        ("POST", "files/search", "searching files"),
        ("POST", "files/visualize", "visualizing"),
        ("POST", "files/transfer", "transfers between providers"),
        ("GET", "files", "streaming search"),
        ("POST", "files/collections", "creating drives"),
        ("DELETE", "files/collections", "deleting drives"),
        ("POST", "files/collections/rename", "renaming drives"),
        ("POST", "files/collections/updateAcl", "sharing drives"),
    ],
)
async def test_unsupported_calls_are_a_400_in_words(env: Env, method: str, route: str, what: str) -> None:
    response = await env.gateway.request(method, f"{BASE}/{route}", json={}, headers=env.headers())
    assert response.status == 400
    why = (await response.json())["why"].lower()
    assert what in why and "not supported by this provider" in why


@pytest.mark.parametrize("route", ["files/retrieveProducts", "files/collections/retrieveProducts"])
async def test_retrieve_products_tells_the_storage_support(env: Env, route: str) -> None:
    response = await env.gateway.get(f"{BASE}/{route}", headers=env.headers(None))
    assert response.status == 200
    supports = (await response.json())["responses"]
    assert {(s["product"]["id"], s["product"]["category"], s["product"]["provider"]) for s in supports} == {
        ("home", "storage", PROVIDER),
        ("project", "storage", PROVIDER),
    }
    for support in supports:
        assert support["stats"] == {
            "sizeInBytes": True,
            "sizeIncludingChildrenInBytes": False,
            "visualization": False,
            "modifiedAt": True,
            "createdAt": True,
            "accessedAt": True,
            "unixPermissions": True,
            "unixOwner": True,
            "unixGroup": True,
        }
        assert support["collection"] == {
            "aclModifiable": False,
            "usersCanCreate": False,
            "usersCanDelete": False,
            "usersCanRename": False,
        }
        assert support["files"] == {
            "aclModifiable": False,
            "trashSupported": True,
            "isReadOnly": False,
            "searchSupported": False,
            "streamingSearchSupported": False,
            "sharesSupported": False,
            "openInTerminal": True,
        }


# --- creating transfers ----------------------------------------------------------------


async def test_create_upload_answers_chunked_endpoints_on_the_gateway(env: Env) -> None:
    await env.serve("alice#1234")
    items = [{"id": f"/7/f{i}", "type": "FILE", "supportedProtocols": ["CHUNKED"]} for i in range(3)]
    response = await env.gateway.post(f"{BASE}/files/upload", json={"items": items}, headers=env.headers("alice#1234"))
    assert response.status == 200, await response.text()
    answers = (await response.json())["responses"]
    assert [a["token"] for a in answers] == ["up-0/x+y", "up-1/x+y", "up-2/x+y"]
    assert {a["protocol"] for a in answers} == {"CHUNKED"}
    url = urlsplit(answers[0]["endpoint"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{PUBLIC_URL}/ucloud/{PROVIDER}/upload"
    assert decode_username(parse_qs(url.query)["usernameHint"][0]) == "alice#1234"
    assert env.ingress.last().path == api.FILES_UPLOAD_PATH


async def test_create_upload_of_a_folder_answers_a_websocket_v2_endpoint_with_the_token(env: Env) -> None:
    await env.serve("alice#1234")
    items = [
        {"id": "/7/f", "type": "FILE", "supportedProtocols": ["CHUNKED", "WEBSOCKET"]},
        {"id": "/7/d", "type": "FOLDER", "supportedProtocols": ["CHUNKED", "WEBSOCKET"]},
    ]
    response = await env.gateway.post(f"{BASE}/files/upload", json={"items": items}, headers=env.headers("alice#1234"))
    assert response.status == 200, await response.text()
    file, folder = (await response.json())["responses"]
    assert (file["protocol"], folder["protocol"]) == ("CHUNKED", "WEBSOCKET_V2")
    url = urlsplit(folder["endpoint"])
    public = urlsplit(PUBLIC_URL)
    assert (url.scheme, url.netloc, url.path) == (
        "wss" if public.scheme == "https" else "ws",
        public.netloc,
        f"/ucloud/{PROVIDER}/upload",
    )
    query = parse_qs(url.query)
    assert query["token"] == [folder["token"]] == ["up-1/x+y"]
    assert decode_username(query["usernameHint"][0]) == "alice#1234"


async def test_create_download_puts_the_token_in_the_endpoint(env: Env) -> None:
    await env.serve()
    response = await env.gateway.post(f"{BASE}/files/download", json={"items": [{"id": "/7/a"}]}, headers=env.headers())
    assert response.status == 200
    (answer,) = (await response.json())["responses"]
    query = parse_qs(urlsplit(answer["endpoint"]).query)
    assert query["token"] == ["down-0/x+y"]
    assert decode_username(query["usernameHint"][0]) == "alice"


async def test_a_refused_transfer_reaches_core_and_a_malformed_answer_is_a_502(env: Env) -> None:
    await env.serve()
    env.ingress.refusals[api.FILES_UPLOAD_PATH] = (403, {"statusCode": 403, "why": "permission denied"})
    response = await env.gateway.post(f"{BASE}/files/upload", json={"items": [{"id": "/7/a"}]}, headers=env.headers())
    assert response.status == 403 and (await response.json())["why"] == "permission denied"
    env.ingress.refusals[api.FILES_DOWNLOAD_PATH] = (200, {"responses": [{"nope": 1}]})
    response = await env.gateway.post(f"{BASE}/files/download", json={"items": [{"id": "/7/a"}]}, headers=env.headers())
    assert response.status == 502


async def test_new_routes_are_measured_by_template(env: Env) -> None:
    await env.serve()
    route = f"{BASE}/files/move"
    before = metric("ucim_gateway_request_duration_seconds_count", route=route, method="POST")
    await env.gateway.post(f"{BASE}/files/move", json={}, headers=env.headers())
    assert metric("ucim_gateway_request_duration_seconds_count", route=route, method="POST") == before + 1
