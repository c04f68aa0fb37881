"""What every bench shares: ``bench_parser`` makes its common options; ``run_bench`` checks for root,
times the run and emits its table and JSON document (with the common header; also to ``--json``);
``in_own_namespace`` runs a bench against the platform in a namespace made for it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ucim.testing.stack import read_platform_env

T = TypeVar("T")


def bench_parser(doc: str | None, *, keep_logs: bool = False, prog: str | None = None) -> argparse.ArgumentParser:
    """A parser with ``--json`` (and ``--keep-logs`` when asked); the bench adds its own options."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    # A group of their own: --help lists them after the bench's own options.
    common = parser.add_argument_group("output")
    common.add_argument("--json", type=Path, default=None, help="also write the JSON document here")
    if keep_logs:
        common.add_argument("--keep-logs", action="store_true", help="keep the components' logs (the run says where)")
    return parser


def run_bench(
    name: str,
    opts: argparse.Namespace,
    measure: Callable[[], dict[str, Any]],
    table: Callable[[dict[str, Any]], str],
    *,
    needs_root: bool = False,
    **fields: Any,
) -> int:
    """Run ``measure`` and emit its result under the common header; the exit code (2: not root).

    The document is the header (name, Python, CPUs), ``fields``, the duration, then the result;
    ``table`` renders that whole document, so a table can show the run's options and duration too.
    """
    if needs_root and os.geteuid() != 0:
        print("run as root: the bridge drops privileges per instance", file=sys.stderr)
        return 2
    started = time.monotonic()
    result = measure()
    document = {
        "benchmark": name,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        **fields,
        "duration_s": round(time.monotonic() - started, 1),
        **result,
    }
    return emit(table(document), document, opts.json)


def emit(table: str, document: dict[str, Any], path: Path | None) -> int:
    """Print ``table`` and ``document``; write the document to ``path`` too. The exit code: 0."""
    print(table)
    print(json.dumps(document, indent=2))
    if path is not None:
        path.write_text(json.dumps(document, indent=2) + "\n")
    return 0


def summary(samples_ms: Sequence[float]) -> dict[str, float]:
    """n, p50, p99, min, max and mean of latencies in milliseconds (nearest rank; {"n": 0} for none)."""
    ordered = sorted(samples_ms)
    if not ordered:
        return {"n": 0}
    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 2),
        "p99": round(ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))], 2),
        "min": round(ordered[0], 2),
        "max": round(ordered[-1], 2),
        "mean": round(statistics.fmean(ordered), 2),
    }


def in_own_namespace(name: str, bench: Callable[[dict[str, str], str], Coroutine[Any, Any, T]]) -> T:
    """``bench(platform env, namespace)`` in a fresh namespace of the running local platform, removed afterwards."""
    env = read_platform_env()
    namespace = f"ucim-bench-{name}-{uuid.uuid4().hex[:6]}"
    kubectl = [str(Path(env["UCIM_BIN_DIR"]) / "kubectl"), "--kubeconfig", env["KUBECONFIG"]]
    subprocess.run([*kubectl, "create", "namespace", namespace], check=True, capture_output=True)
    try:
        return asyncio.run(bench(env, namespace))
    finally:
        subprocess.run([*kubectl, "delete", "namespace", namespace, "--wait=false"], check=False, capture_output=True)


def cpu_seconds(roles: Mapping[str, str]) -> dict[str, float]:
    """CPU time (user + system) used so far by each role's live processes: a role is a part of their command
    line; this process is "client"."""
    tick = os.sysconf("SC_CLK_TCK")
    used = dict.fromkeys([*roles, "client"], 0.0)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # ended meanwhile
        seconds = (int(fields[11]) + int(fields[12])) / tick
        role = "client" if int(entry.name) == os.getpid() else next((r for r, p in roles.items() if p in command), None)
        if role is not None:
            used[role] += seconds
    return used
