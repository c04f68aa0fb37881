"""Layering: components never import each other; shared code lives in ucim.common.

import-linter (grimp) cannot see ``ucim.operator``, a namespace portion kept
without ``__init__.py`` so that it never shadows the standard library's
``operator`` (see operator/README.md), so the contract is checked here from
the source with ``ast``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPONENTS = ("gateway", "operator", "slurm_bridge", "user_sidecar")
# What each folder may import of ucim, besides itself.
ALLOWED = {**{c: {"common"} for c in COMPONENTS}, "common": set[str]()}


def ucim_imports(source: Path) -> set[str]:
    """The ucim packages (second name of ucim.X.…) a file imports."""
    found = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "ucim" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_folder_imports_only_what_it_may(folder: str) -> None:
    for source in sorted((REPO / folder).rglob("*.py")):
        forbidden = ucim_imports(source) - ALLOWED[folder] - {folder}
        assert not forbidden, f"{source.relative_to(REPO)} imports ucim.{', ucim.'.join(sorted(forbidden))}"
