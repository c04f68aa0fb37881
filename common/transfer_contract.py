"""What the gateway and the user's instance agree on about the browser's transfers (UCloud's CHUNKED protocol).

The browser sends upload chunks to, and downloads from, the gateway; the gateway forwards
them to the user's instance (``ucim.gateway.transfers`` → ``ucim.user_sidecar.transfer_views``).
Both ends check the chunk limit and answer with the same CORS policy, so the instance's own
answers (its refusals, an upload's progress, a download) read the same to a browser as the
gateway's, and a test or a smoke check that calls the instance directly sees the real policy.
"""

from __future__ import annotations

from typing import Final

from ucim.common.instance_api import CHUNKED_OFFSET_HEADER, CHUNKED_TOKEN_HEADER, CHUNKED_TOTAL_SIZE_HEADER
from ucim.common.protocol import USERNAME_HEADER

# The CHUNKED protocol's largest chunk.
MAX_CHUNK_BYTES: Final = 32_000_000
# The chunk the web client sends (frontend-web Files/Upload.ts maxChunkSize).
WEB_CLIENT_CHUNK_BYTES: Final = 16_000_000

# Every answer of a transfer endpoint, errors included, so that a browser on Core's origin can read it
# (the ``why`` of a refusal, where to continue an upload, a download's name and range).
CORS_HEADERS: Final = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": ", ".join(
        (
            "Content-Length",
            "Content-Range",
            "Content-Disposition",
            "Accept-Ranges",
            "ETag",
            "Last-Modified",
            CHUNKED_OFFSET_HEADER,
        )
    ),
}
# The answer to a preflight (OPTIONS) of a transfer endpoint.
PREFLIGHT_HEADERS: Final = {
    **CORS_HEADERS,
    # HEAD: a download answers it without using its token up.
    "Access-Control-Allow-Methods": "GET, HEAD, POST, OPTIONS",
    "Access-Control-Allow-Headers": ", ".join(
        (
            "Content-Type",
            USERNAME_HEADER,
            CHUNKED_TOKEN_HEADER,
            CHUNKED_OFFSET_HEADER,
            CHUNKED_TOTAL_SIZE_HEADER,
            "Range",
            "If-Range",
        )
    ),
    # A day: what browsers have always been told, since the gateway answers every preflight they send
    # (the instance's own preflight is reached only by direct calls). Browsers cap it themselves
    # (Chromium at 2 h, Firefox at 24 h), and the policy changes only with a release.
    "Access-Control-Max-Age": "86400",
}
