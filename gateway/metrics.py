"""The gateway's Prometheus metrics; every label is bounded (route templates, methods, statuses, reasons)."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("ucim_gateway_requests_total", "Requests answered by the gateway", ["route", "method", "code"])
LATENCY = Histogram(
    "ucim_gateway_request_duration_seconds",
    "Time to answer a request, by route template",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ERRORS = Counter(
    "ucim_gateway_errors_total", "Answers of 400 and above, by route template and reason", ["route", "reason"]
)
# Counted while the bytes stream through, so a transfer shows up before it ends.
UPLOAD_BYTES = Counter("ucim_gateway_upload_bytes_total", "Upload data forwarded to user instances")
DOWNLOAD_BYTES = Counter("ucim_gateway_download_bytes_total", "Download data streamed from user instances")
SESSIONS_OPEN = Gauge(
    "ucim_gateway_sessions_open", "Websocket sessions relayed now, by type (shell, follow, web, vnc, upload)", ["type"]
)
PROXIED_BYTES = Counter(
    "ucim_gateway_proxied_bytes_total",
    "Bytes relayed between browsers and jobs' web and VNC servers, by type (web, vnc) and direction (up, down)",
    ["type", "direction"],
)
# Every series exists from the start at 0, so dashboards and rates see "none yet" rather than no data.
for _kind in ("follow", "shell", "web", "vnc", "upload"):
    SESSIONS_OPEN.labels(_kind)
for _kind in ("web", "vnc"):
    for _direction in ("up", "down"):
        PROXIED_BYTES.labels(_kind, _direction)

# The reason of an error answer, from its status: one small, fixed set of label values.
_REASONS: Final = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "bad_request",
    409: "conflict",
    413: "too_large",
    416: "bad_request",
    449: "not_ready",
    502: "instance_unreachable",
    503: "unavailable",
    504: "instance_unreachable",
}


def error_reason(status: int) -> str:
    """The ``reason`` label of an answer with this status (400 or above)."""
    if status in _REASONS:
        return _REASONS[status]
    return "internal" if status >= 500 else "other"


# Log follow (gateway/follow.py): what Core's follow sockets received, and how many are open.
LOG_LINES = Counter("ucim_gateway_log_lines_total", "Lines of job output sent to Core's follow sockets")
LOG_BYTES = Counter("ucim_gateway_log_bytes_total", "Bytes (UTF-8) of job output sent to Core's follow sockets")
