"""Layering: components never import each other; shared code lives in ucim.common. kopf handlers stay small.

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


# A kopf handler reads top to bottom as one idea: its work is in functions that return outcomes.
MAX_HANDLER_LINES = 40


def kopf_handlers(source: Path) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """The functions of a file decorated with ``kopf.on.<something>(...)``."""
    handlers = []
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for decorator in node.decorator_list:
            target = decorator.func if isinstance(decorator, ast.Call) else decorator
            if isinstance(target, ast.Attribute) and ast.unparse(target.value) == "kopf.on":
                handlers.append(node)
                break
    return handlers


def test_the_operator_has_kopf_handlers() -> None:
    assert kopf_handlers(REPO / "operator" / "handlers.py"), "the handler check below would find nothing to check"


@pytest.mark.parametrize("source", sorted((REPO / "operator").rglob("*.py")), ids=lambda path: path.name)
def test_kopf_handlers_are_short(source: Path) -> None:
    long = [
        f"{handler.name} ({length} lines)"
        for handler in kopf_handlers(source)
        if (length := (handler.end_lineno or handler.lineno) - handler.lineno + 1) > MAX_HANDLER_LINES
    ]
    assert not long, f"{source.relative_to(REPO)}: kopf handlers over {MAX_HANDLER_LINES} lines: {', '.join(long)}"
