"""The operator's Prometheus metrics (kopf exposes none of its own).

Labels are bounded: a result, a UCloud state, a failure reason; never a user or a job.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOB_SUBMISSIONS = Counter(
    "ucim_job_submissions_total",
    "Submit calls to user instances, by result (accepted, already_submitted, rejected, unreachable).",
    ["result"],
)
JOB_STATE_TRANSITIONS = Counter(
    "ucim_job_state_transitions_total",
    "Job state changes delivered to UCloud/Core, by UCloud state.",
    ["state"],
)
CORE_UPDATES_DELIVERED = Counter(
    "ucim_core_updates_delivered_total",
    "Job updates UCloud/Core accepted.",
)
CORE_UPDATE_FAILURES = Counter(
    "ucim_core_update_failures_total",
    "Job updates that failed to reach UCloud/Core in one attempt, by reason (unavailable, rejected).",
    ["reason"],
)
CORE_DELIVERY_BACKLOG = Gauge(
    "ucim_core_delivery_backlog",
    "Job state changes recorded in Kubernetes but not yet acknowledged by UCloud/Core.",
)
CORE_DELIVERY_LATENCY = Histogram(
    "ucim_core_delivery_latency_seconds",
    "From a state change's timestamp to Core's acknowledgement of it.",
    buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0),
)

# --- Core's accounting event stream -----------------------------------------------------
ACCOUNTING_ENABLED = Gauge(
    "ucim_accounting_enabled",
    "1 when the operator runs Core's accounting (UCIM_OPERATOR_ACCOUNTING_ENABLED): the accounting alerts apply.",
)
ACCOUNTING_STREAM_CONNECTED = Gauge(
    "ucim_accounting_stream_connected",
    "1 while the operator holds Core's accounting event stream open.",
)
ACCOUNTING_STREAM_DISCONNECTS = Counter(
    "ucim_accounting_stream_disconnects_total",
    "Sessions of Core's accounting event stream that ended (Core closed it, or it broke).",
)
ACCOUNTING_EVENTS = Counter(
    "ucim_accounting_events_total",
    "Events read from Core's accounting event stream, by kind (project, wallet, malformed).",
    ["kind"],
)
ACCOUNTING_CHANGES = Counter(
    "ucim_accounting_changes_total",
    "Events that changed a UCloudProject (a replayed event changes nothing), by kind.",
    ["kind"],
)
ACCOUNTING_LAST_EVENT = Gauge(
    "ucim_accounting_last_event_timestamp_seconds",
    "Core's timestamp of the newest event applied: how far behind Core the workspaces are.",
)
USAGE_REPORTS = Counter(
    "ucim_usage_reports_total",
    "Usage figures (one workspace, one category) sent to Core's reportUsage, by result (accepted, refused).",
    ["result"],
)

# --- connections -------------------------------------------------------------------------
CONNECTIONS_CLEARED = Counter(
    "ucim_connections_cleared_total",
    "Connections the operator cleared at UCloud/Core (clearConnection) when they ended, by reason (expired, unlinked).",
    ["reason"],
)

# Every series exists from the start (at 0), so rate(), the dashboards and the alerts see the first one.
for _kind in ("project", "wallet", "malformed"):
    ACCOUNTING_EVENTS.labels(kind=_kind)
for _kind in ("project", "wallet"):
    ACCOUNTING_CHANGES.labels(kind=_kind)
for _result in ("accepted", "refused"):
    USAGE_REPORTS.labels(result=_result)
for _reason in ("expired", "unlinked"):
    CONNECTIONS_CLEARED.labels(reason=_reason)
