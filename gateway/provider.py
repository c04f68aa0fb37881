"""What Core asks about the provider itself: the support of each resource type, and the branding.

Core polls every provider every 10 s, without a user (core2 ``orchestrator/features.go`` and
``provider_brandings.go``): the manifest, ``retrieveProducts`` of drives, jobs, ingresses,
public IPs, licenses and private networks, and ``provider/branding/retrieveInfo``. ucim runs
batch jobs and serves files (``views.py``, ``files.py``); it offers none of the other four
types, so it lists no products for them, as IM2 does, rather than answering 404 (which Core
logs as a failed poll, every 10 s).
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from ucim.common.protocol import BulkResponse, Empty, ProviderBranding, dump
from ucim.gateway.keys import SETTINGS

# The provider contexts of the resource types ucim does not offer (shared/pkg/orchestrators: ingresses.go,
# public_ips.go, licenses.go, private_network.go).
UNOFFERED_TYPES: Final = ("ingresses", "networkips", "licenses", "private-networks")


async def no_products(request: web.Request) -> web.Response:
    # An empty BulkResponse is {} on the wire (Go's omitempty), exactly what IM2 answers.
    return web.json_response(dump(BulkResponse[Empty]()))


async def branding(request: web.Request) -> web.Response:
    """IM2's answer when no branding is configured, with the provider id as the title rather than nothing."""
    provider_id = request.app[SETTINGS].provider_id
    return web.json_response(dump(ProviderBranding(id=provider_id, title=provider_id, short_title=provider_id)))


def setup_provider_routes(app: web.Application, base: str) -> None:
    for resource_type in UNOFFERED_TYPES:
        app.router.add_get(f"{base}/{resource_type}/retrieveProducts", no_products)
    app.router.add_get(f"{base}/provider/branding/retrieveInfo", branding)
