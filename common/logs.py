"""One JSON log shape for every component.

The shape follows kopf's ``--log-format=json`` (``message``, ``timestamp``,
``severity``, plus ``object`` when a record concerns a Kubernetes object), so
the operator's lines and ours can be read by the same log pipeline.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from ucim.common.request_ids import RequestIdFilter

# Attributes every LogRecord has; anything else was passed through `extra=`.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
# kopf's per-object loggers add these to every record: its reference to the object (written as
# ``object``, as kopf's own JSON formatter does) and two of its own, one of them the whole of its
# settings (about 2 kB a line: the operator's log grew by 17 kB per job).
_KOPF_ATTRS = frozenset({"k8s_ref", "k8s_skip", "settings"})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "message": record.getMessage(),
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "severity": record.levelname.lower(),
            "logger": record.name,
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS | _KOPF_ATTRS})
        if (ref := getattr(record, "k8s_ref", None)) is not None:
            entry["object"] = ref
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Configure the root logger once, at process start."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RequestIdFilter())  # a request's id on every line logged while it runs
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
