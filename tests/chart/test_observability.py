"""Alerts, their unit tests and runbooks, and dashboards that cannot drift from the code.

The metric names a dashboard panel or an alert reads must be names the code exports: they are
collected from the ``Counter("ucim_...")``-style definitions in the component folders, with the
suffixes prometheus_client adds (``_total`` for counters; ``_bucket``/``_sum``/``_count`` for
histograms), plus the standard ``process_*`` metrics of prometheus_client.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter as Tally
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, ProcessCollector

from tests.chart.helm import (
    DASHBOARDS,
    REPO,
    RULE_TESTS,
    RULES,
    RUNBOOKS,
    alerts,
    dashboard_queries,
    metric_names,
)

COMPONENT_FOLDERS = ("common", "gateway", "operator", "slurm_bridge", "user_sidecar")
SEVERITIES = {"critical", "warning", "info"}

# Metrics the dashboards and alerts already use while the code that exports them is being written
# elsewhere. The test of such a name is an expected failure until the metric exists; then it
# passes unexpectedly, which fails the run (strict), so the entry must be removed here.
PENDING_METRICS: dict[str, str] = {}

_DEFINITION = re.compile(r"\b(Counter|Gauge|Histogram|Summary|Info|Enum)\(\s*[\"'](ucim_[a-z0-9_]+)[\"']")
_SUFFIXES = {
    "Counter": ("_total", "_created"),
    "Gauge": ("",),
    "Histogram": ("_bucket", "_sum", "_count", "_created"),
    "Summary": ("", "_sum", "_count", "_created"),
    "Info": ("_info",),
    "Enum": ("",),
}


def exported_metrics() -> set[str]:
    """Every sample name the components can export."""
    names: set[str] = set()
    for folder in COMPONENT_FOLDERS:
        for path in (REPO / folder).rglob("*.py"):
            for kind, name in _DEFINITION.findall(path.read_text()):
                base = name.removesuffix("_total") if kind == "Counter" else name
                names.update(base + suffix for suffix in _SUFFIXES[kind])
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    names.update(sample.name for family in registry.collect() for sample in family.samples)
    return names


def _used_metrics() -> list[Any]:
    uses: dict[str, list[str]] = {}
    for board, panel, expr in dashboard_queries():
        for name in metric_names(expr):
            uses.setdefault(name, []).append(f"{board}: {panel}")
    for alert in alerts():
        for name in metric_names(alert["expr"]):
            uses.setdefault(name, []).append(f"alert {alert['alert']}")
    return [
        pytest.param(
            name,
            where,
            id=name,
            marks=[pytest.mark.xfail(reason=PENDING_METRICS[name], strict=True)] if name in PENDING_METRICS else [],
        )
        for name, where in sorted(uses.items())
    ]


@pytest.mark.parametrize(("name", "used_by"), _used_metrics())
def test_metric_is_exported_by_the_code(name: str, used_by: list[str]) -> None:
    assert name in exported_metrics(), f"{name} (used by {', '.join(used_by)}) is not defined in {COMPONENT_FOLDERS}"


def test_pending_metrics_are_still_used() -> None:
    used = {name for _, _, expr in dashboard_queries() for name in metric_names(expr)}
    used |= {name for alert in alerts() for name in metric_names(alert["expr"])}
    assert set(PENDING_METRICS) <= used


# --- alerts ---------------------------------------------------------------------------------


def test_promtool_check_rules(promtool: str) -> None:
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "test", "rules", *map(str, RULE_TESTS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: a["alert"])
def test_alert_is_complete(alert: dict[str, Any]) -> None:
    name = alert["alert"]
    assert re.fullmatch(r"Ucim[A-Z][A-Za-z]+", name)
    assert re.fullmatch(r"[0-9]+[smh]", alert.get("for", "")), "every alert waits (`for`)"
    assert alert["labels"]["severity"] in SEVERITIES
    annotations = alert["annotations"]
    assert set(annotations) >= {"summary", "description", "runbook_url"}
    assert annotations["runbook_url"] == f"https://github.com/ucim/ucim/blob/main/docs/runbooks/{name}.md"
    runbook = RUNBOOKS / f"{name}.md"
    assert runbook.is_file(), f"write {runbook.relative_to(REPO)}"
    text = runbook.read_text()
    assert text.startswith(f"# {name}\n")
    for section in ("## Meaning", "## Impact", "## Diagnosis", "## Mitigation"):
        assert section in text, f"{runbook.name} lacks {section}"


def test_every_alert_has_unit_tests_that_fire_and_stay_quiet() -> None:
    fired: Tally[str] = Tally()
    quiet: Tally[str] = Tally()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check["exp_alerts"] else quiet)[check["alertname"]] += 1
    names = {a["alert"] for a in alerts()}
    assert names - set(fired) == set(), "alerts without a firing test"
    assert names - set(quiet) == set(), "alerts without a quiet test"


def test_runbooks_belong_to_alerts() -> None:
    names = {a["alert"] for a in alerts()}
    orphans = [p.name for p in RUNBOOKS.glob("Ucim*.md") if p.stem not in names]
    assert orphans == []


# --- dashboards -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_is_well_formed(path: Any) -> None:
    board = json.loads(path.read_text())
    assert board["uid"] == f"ucim-{path.stem}"
    assert "ucim" in board["tags"]
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        for target in panel["targets"]:
            assert metric_names(target["expr"]), f"{panel['title']}: no ucim_/process_ metric"


def test_dashboards_cover_the_issue() -> None:
    """The panels the issue asks for exist (by the metrics they read)."""
    used = {name for _, _, expr in dashboard_queries() for name in metric_names(expr)}
    wanted = {
        "ucim_job_state_transitions_total",  # jobs by state
        "ucim_job_submissions_total",  # submit rate
        "ucim_core_delivery_latency_seconds_bucket",  # state change latency
        "ucim_instances_running",  # instances count
        "ucim_instance_spawn_duration_seconds_bucket",  # spawn latency
        "process_resident_memory_bytes",  # memory
        "ucim_gateway_requests_total",  # requests and errors by route
        "ucim_gateway_request_duration_seconds_bucket",  # latency by route
        "ucim_slurm_poll_duration_seconds_bucket",  # poll duration
        "ucim_slurm_poll_errors_total",  # poll errors
        "ucim_core_delivery_backlog",  # delivery backlog
        "ucim_core_update_failures_total",  # delivery failures
        "ucim_gateway_sessions_open",  # interactive sessions by type (shell, follow, web, vnc)
        "ucim_gateway_proxied_bytes_total",  # web and VNC traffic by type and direction
        "ucim_gateway_log_lines_total",  # job log lines streamed to Core
    }
    assert wanted - used == set()
