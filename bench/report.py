"""How every bench ends: its table, then its JSON document, also written to ``--json`` when given."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(table: str, document: dict[str, Any], path: Path | None) -> int:
    """Print ``table`` and ``document``; write the document to ``path`` too. The exit code: 0."""
    print(table)
    print(json.dumps(document, indent=2))
    if path is not None:
        path.write_text(json.dumps(document, indent=2) + "\n")
    return 0
