#!/usr/bin/env python3
"""What rendering Core's applications costs: the gateway's check and the instance's render, warm and cold.

In this process, no platform needed. Two applications:

* ``hello-py``: the example of PROTOCOL-APPS §11 (a load instruction, an input file, two parameters);
* ``hostile``: a template that prints one text parameter through every path (``{{ x }}``, ``option``,
  an environment variable, an ``sbatch:`` entry) with a 60 KiB value full of quotes, line breaks and
  ``#SBATCH`` lines, and a ``{% for %}`` over 200 numbers.

For each: ``check_application`` (what job creation runs at the gateway) and ``render_job`` (what submit
runs in the instance), **warm** (templates compiled and cached, as for every job after an application's
first) and **cold** (the template cache emptied before each call: an application's first job); and, to
see where a cold call goes, ``compile_template`` of the invocation alone.

    python3 -m bench render                        # 2000 rounds warm, 200 cold
    python3 -m bench render --rounds 500 --json out.json

The table goes to stdout, followed by the JSON document (also written to --json if given).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.report import bench_parser, run_bench
from ucim.common import app_templates
from ucim.common.app_templates import check_application, compile_template, preprocess
from ucim.common.instance_api import SubmitRequest
from ucim.user_sidecar.load_instructions import SiteApplications, parse_documents
from ucim.user_sidecar.sbatch import render_job

FOLDER = Path("/home/alice/ucloud-jobs/4821")
SITE_YAML = (
    "name: python\nconfigurations:\n  - versions: ['3.11.4', '3.12.1']\n    load: module load Python/{{ appVersion }}\n"
)
HOSTILE_VALUE = ("'\"$(id)`id`\\\n#SBATCH --account=evil\n{{ 7*7 }}{% raw %} " * 1500)[:60_000]


def _request(application: dict[str, Any], parameters: dict[str, Any]) -> SubmitRequest:
    return SubmitRequest.model_validate(
        {
            "jobId": "4821",
            "slurmJobName": "ucim-6f1c8a2e",
            "application": application,
            "parameters": {**parameters, "ucMetricSampleRate": {"type": "text", "value": "0ms"}},
            "product": {"id": "u1-standard-2", "category": "u1-standard"},
            "resources": {"nodes": 1, "cpusPerNode": 2, "memoryMegabytesPerNode": 2000, "timeLimitMinutes": 90},
            "slurm": {"partition": "normal", "qos": "standard", "account": "alice_u1-standard"},
        }
    )


def hello_py() -> SubmitRequest:
    template = (
        "{- applicationLoad -}\n"
        '{{ srun() }} python3 run.py --input {{ input }} --count {{ count }} {{ verbose | flag("--verbose") }}\n'
    )
    application = {
        "name": "hello-py",
        "version": "3.11",
        "invocation": [{"type": "jinja", "template": template}],
        "parameters": [
            {"type": "input_file", "name": "input"},
            {"type": "integer", "name": "count", "optional": True, "defaultValue": 3},
            {"type": "boolean", "name": "verbose", "optional": True},
        ],
        "load": [{"name": "python", "version": "3.11"}],
    }
    return _request(application, {"input": {"type": "file", "path": "/17/data/in.csv"}})


def hostile() -> SubmitRequest:
    template = (
        "{- applicationLoad -}\n"
        "printf '%s\\0' {{ x }} {{ x | option('--in') }} {{ x | option('--in=') }}\n"
        "{% for i in range(200) %}echo {{ i }} {{ ucloud.jobId }}\n{% endfor %}"
    )
    application = {
        "name": "hostile",
        "version": "1",
        "invocation": [{"type": "jinja", "template": template}],
        "parameters": [{"type": "textarea", "name": "x"}, {"type": "text", "name": "line"}],
        "environment": {"V": {"type": "jinja", "template": "{{ x }}"}, "W": {"type": "word", "word": "{{ x }}"}},
        "sbatch": {"mail-user": {"type": "var", "variableNames": ["line"]}},
        "load": [{"name": "python", "version": "3.11"}],
    }
    line = HOSTILE_VALUE.replace("\n", " ")[:4000]
    return _request(
        application, {"x": {"type": "text", "value": HOSTILE_VALUE}, "line": {"type": "text", "value": line}}
    )


def timed(call: Callable[[], object], rounds: int, *, cold: bool) -> list[float]:
    call()  # one untimed call: imports, and the cache filled for the warm rounds
    samples = []
    for _ in range(rounds):
        if cold:
            app_templates._compiled.cache_clear()
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(share: float) -> float:
        return round(ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))], 4)

    return {"p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": round(ordered[-1], 4), "n": len(ordered)}


def measure(rounds: int, cold_rounds: int) -> dict[str, Any]:
    documents = parse_documents(SITE_YAML, source="python.yml")
    site = SiteApplications(applications={d.name: d.configurations for d in documents})
    results: dict[str, Any] = {}
    for name, request in (("hello-py", hello_py()), ("hostile", hostile())):
        application, parameters = request.application, request.parameters
        source = application.invocation[0].template or ""
        paths = {"input": Path("/home/alice/data/in.csv")}
        calls: dict[str, Callable[[], object]] = {
            "check_application": lambda a=application, p=parameters: check_application(a, p),  # type: ignore[misc]
            "render_job": lambda r=request, s=site, p=paths: render_job(r, FOLDER, s, p),  # type: ignore[misc]
            "compile_template": lambda t=source: compile_template(preprocess(t, lambda n, a: "")),  # type: ignore[misc]
        }
        row: dict[str, Any] = {"script_bytes": len(render_job(request, FOLDER, site, paths).script.encode())}
        for label, call in calls.items():
            row[label] = {
                "warm": summary(timed(call, rounds, cold=False)),
                "cold": summary(timed(call, cold_rounds, cold=True)),
            }
        results[name] = row
    return {"results": results}


def table(document: dict[str, Any]) -> str:
    header = f"{'application / call':<34}{'warm p50':>10}{'warm p99':>10}{'cold p50':>10}{'cold p99':>10}   (ms)"
    lines = [header, "-" * len(header)]
    for name, row in document["results"].items():
        for label in ("check_application", "render_job", "compile_template"):
            warm, cold = row[label]["warm"], row[label]["cold"]
            cells = f"{warm['p50_ms']:>10.3f}{warm['p99_ms']:>10.3f}{cold['p50_ms']:>10.3f}{cold['p99_ms']:>10.3f}"
            lines.append(f"{name + ' ' + label:<34}{cells}")
        lines.append(f"{name + ' script bytes':<34}{row['script_bytes']:>10}")
    return "\n".join(lines)


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=2000, help="warm calls per measurement")
    parser.add_argument("--cold-rounds", type=int, default=200, help="cold calls (cache emptied) per measurement")
    opts = parser.parse_args()
    return run_bench(
        "render",
        opts,
        lambda: measure(opts.rounds, opts.cold_rounds),
        table,
        rounds=opts.rounds,
        cold_rounds=opts.cold_rounds,
    )


if __name__ == "__main__":
    sys.exit(main())
