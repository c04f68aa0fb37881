"""The Helm chart under test, and the helm and promtool binaries the chart tests use.

helm has no Debian package: ``hack/build-helm.sh`` builds the pinned helm v3 from its Go
module once and caches it under ``$UCIM_CACHE/bin`` (a warm run just prints the path).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "ucim"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RULES = CHART / "prometheus" / "rules.yaml"
RULE_TESTS = sorted((CHART / "prometheus" / "tests").glob("*.yaml"))
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
RUNBOOKS = REPO / "docs" / "runbooks"
CRDS = sorted((REPO / "crds").glob("*.yaml"))
CHART_CRDS = sorted((CHART / "files" / "crds").glob("*.yaml"))
MONITORING_CRDS = Path(__file__).with_name("fixtures") / "monitoring.coreos.com-crds.yaml"

Manifest = dict[str, Any]


@cache
def helm_binary() -> str:
    """The pinned helm, built on first use (about a minute on two cores, then cached)."""
    result = subprocess.run(
        ["bash", str(REPO / "hack" / "build-helm.sh")], capture_output=True, text=True, timeout=900, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"hack/build-helm.sh failed:\n{result.stderr[-3000:]}")
    return result.stdout.strip().splitlines()[-1]


@dataclass(frozen=True)
class Helm:
    """helm, optionally pointed at a cluster through ``env`` (KUBECONFIG)."""

    binary: str
    env: dict[str, str]

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [self.binary, *args]
        result = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, **self.env}, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{shlex.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def template_text(self, *args: str, values: Path | None = None, namespace: str = "ucim") -> str:
        """The rendered chart as YAML text (release "r"); ``args`` are extra flags such as --set."""
        files = ["-f", str(values)] if values is not None else []
        return self.run("template", "r", str(CHART), "--namespace", namespace, *files, *args).stdout

    def template(self, *args: str, values: Path | None = None, namespace: str = "ucim") -> list[Manifest]:
        return parse_manifests(self.template_text(*args, values=values, namespace=namespace))


def parse_manifests(text: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(manifests: Iterable[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]


def one(manifests: Iterable[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = find(manifests, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs(manifests: Iterable[Manifest]) -> list[tuple[str, Manifest]]:
    """(kind/name, pod spec) of every Deployment and Pod."""
    specs = []
    for m in manifests:
        if m["kind"] == "Deployment":
            specs.append((f"Deployment/{m['metadata']['name']}", m["spec"]["template"]["spec"]))
        elif m["kind"] == "Pod":
            specs.append((f"Pod/{m['metadata']['name']}", m["spec"]))
    return specs


def ci_values(name: str) -> Path:
    path = CHART / "ci" / f"{name}-values.yaml"
    assert path.is_file(), path
    return path


def load_values(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    return data


def load_rules() -> dict[str, Any]:
    rules: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return rules


def alerts() -> list[dict[str, Any]]:
    return [rule for group in load_rules()["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, PromQL) of every panel target."""
    queries = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                queries.append((path.name, panel["title"], target["expr"]))
    return queries


_METRIC = re.compile(r"\b((?:ucim|process)_[a-z0-9_]+)\b")


def metric_names(promql: str) -> set[str]:
    """The ucim_* and process_* metric names a PromQL expression reads."""
    return set(_METRIC.findall(promql))
