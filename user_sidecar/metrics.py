"""The instance's Prometheus metrics; every label is bounded (a result, a transfer's kind and outcome)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

SUBMISSIONS = Counter(
    "ucim_submissions",
    "Job submissions by this instance, by result (submitted, already_submitted, invalid, rejected, unavailable).",
    ["result"],
)
UPLOAD_BYTES = Counter("ucim_instance_upload_bytes", "Bytes of upload chunks written to disk by this instance.")
DOWNLOAD_BYTES = Counter("ucim_instance_download_bytes", "Bytes of files this instance sent to downloads.")
TRANSFER_EVENTS = Counter(
    "ucim_instance_transfers",
    "Transfer sessions by kind (upload, download) and outcome "
    "(created, refused, completed, conflict, served, aborted, expired).",
    ["kind", "outcome"],
)
SHELLS = Gauge("ucim_instance_shell_sessions_open", "Shell websockets open on this instance (each runs a terminal).")
LOG_BYTES = Counter("ucim_instance_log_bytes", "Bytes of job output lines this instance streamed to log follows.")
