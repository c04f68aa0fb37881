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


# Reading the apiserver: what a loop must not do on a timer (it watches instead).
_KUBE_READS = {"get", "list", "list_versioned"}


def _called(node: ast.AST) -> list[ast.Attribute | ast.Name]:
    return [n.func for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute | ast.Name)]


def _name(func: ast.Attribute | ast.Name) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id


def _reads_kube(func: ast.Attribute | ast.Name) -> bool:
    return isinstance(func, ast.Attribute) and func.attr in _KUBE_READS and "kube" in ast.unparse(func.value)


def _reading_functions(tree: ast.Module) -> set[str]:
    """The module's functions that read through Kube, directly or through another of its functions."""
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    reading = {f.name for f in functions if any(_reads_kube(c) for c in _called(f))}
    while True:
        more = {f.name for f in functions if any(_name(c) in reading for c in _called(f))} - reading
        if not more:
            return reading
        reading |= more


def _polls_the_apiserver(loop: ast.AST, reading: set[str]) -> bool:
    """A loop that sleeps and reads the apiserver (itself, or through a function of its module that does)."""
    calls = _called(loop)
    sleeps = any(_name(c) == "sleep" for c in calls)
    return sleeps and any(_reads_kube(c) or _name(c) in reading for c in calls)


def polling_loops(source: str) -> list[int]:
    tree = ast.parse(source)
    reading = _reading_functions(tree)
    loops = (n for n in ast.walk(tree) if isinstance(n, ast.While | ast.For | ast.AsyncFor))
    return [loop.lineno for loop in loops if _polls_the_apiserver(loop, reading)]


@pytest.mark.parametrize("folder", [*COMPONENTS, "common"])
def test_no_loop_sleeps_and_reads_the_apiserver_again(folder: str) -> None:
    for source in sorted((REPO / folder).rglob("*.py")):
        assert polling_loops(source.read_text()) == [], f"{source.relative_to(REPO)} polls the apiserver"


def test_the_polling_check_finds_a_poll_through_a_method() -> None:
    poll = """
class Instances:
    async def get(self, name):
        return await self.kube.get(UserInstance, self.namespace, name)

    async def wait_ready(self, name):
        while True:
            if is_ready(await self.get(name)):
                return
            await asyncio.sleep(0.02)
"""
    assert polling_loops(poll) == [7]
