"""The chart without a cluster: lint, schema, and what each values file renders."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.helm import (
    CHART,
    CHART_CRDS,
    CI_VALUES,
    CRDS,
    DASHBOARDS,
    Helm,
    Manifest,
    ci_values,
    find,
    load_rules,
    load_values,
    one,
    pod_specs,
)
from ucim.gateway.extension_policy import ExtensionPolicy
from ucim.gateway.settings import GatewaySettings
from ucim.operator.settings import OperatorSettings

ci_params = pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name.removesuffix("-values.yaml"))


# --- lint and schema ------------------------------------------------------------------------


@ci_params
def test_lint_strict(helm: Helm, values: Path) -> None:
    result = helm.run("lint", "--strict", str(CHART), "-f", str(values))
    assert "0 chart(s) failed" in result.stdout


def test_values_yaml_declares_its_schema() -> None:
    first = (CHART / "values.yaml").read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=values.schema.json"


def test_schema_is_strict_everywhere() -> None:
    """Every object of our own in the schema forbids unknown keys (Kubernetes types aside)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    loose: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        if "properties" in node and node.get("additionalProperties") is not False:
            loose.append(path or "<root>")
        for key, child in node.get("properties", {}).items():
            walk(child, f"{path}.{key}")
        for key, child in node.get("definitions", {}).items():
            walk(child, f"#{key}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(schema, "")
    assert loose == []


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("operator.replicas=2", "additional properties 'replicas' not allowed"),
        ("gateway.ingress.enable=true", "additional properties 'enable' not allowed"),
        ("log.level=LOUD", "value must be one of"),
        ("gateway.replicas=0", "minimum"),
        ("ingressToken=short", "does not match pattern"),
        ("gateway.web.domainSuffix=apps.example.org", "does not match pattern"),  # no leading dot
        ("gateway.web.domainSuffix=.Apps.example.org", "does not match pattern"),
        ("gateway.web.domainSuffix=.apps..example.org", "does not match pattern"),
        ("gateway.web.prefix=App_", "does not match pattern"),
        ("gateway.web.sessionSeconds=10", "minimum"),
    ],
)
def test_schema_rejects_bad_values(helm: Helm, flag: str, message: str) -> None:
    result = helm.run("template", "r", str(CHART), "-f", str(ci_values("minimal")), "--set", flag, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_core_public_key_is_required(helm: Helm) -> None:
    result = helm.run("template", "r", str(CHART), check=False)
    assert result.returncode != 0
    assert "core.publicKey is required" in result.stderr


def test_every_values_key_is_commented() -> None:
    """Each key of values.yaml (outside Kubernetes-typed blocks such as resources) has a comment above it."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    undocumented = []
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [k for _, k in stack] + [key]
        stack.append((indent, key))
        if not _is_own_key(schema, path):
            continue
        previous = lines[number - 1].strip() if number else ""
        if not previous.startswith("#"):
            undocumented.append(".".join(path))
    assert undocumented == []


def _is_own_key(schema: dict[str, Any], path: list[str]) -> bool:
    """Whether ``path`` is a key the chart defines (its parent object is strict in the schema)."""
    node = schema
    for key in path:
        if node.get("additionalProperties") is not False or key not in node.get("properties", {}):
            return False
        node = node["properties"][key]
        if "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
    return True


def test_each_integration_is_rendered_on_and_off() -> None:
    """Every optional integration is switched on in one ci/ values file and off in another."""
    switches = [
        "crds.enabled",
        "crds.keep",
        "rbac.create",
        "bridge.enabled",
        "bridge.tokenSecret",
        "gateway.ingress.enabled",
        "gateway.web.enabled",
        "gateway.podDisruptionBudget.enabled",
        "networkPolicy.enabled",
        "networkPolicy.egress.enabled",
        "serviceMonitor.enabled",
        "bridgeScrapeConfig.enabled",
        "prometheusRule.enabled",
        "dashboards.enabled",
        "tests.enabled",
    ]
    defaults = load_values(CHART / "values.yaml")
    seen: dict[str, set[bool]] = {switch: set() for switch in switches}
    for path in CI_VALUES:
        overrides = load_values(path)
        for switch in switches:
            seen[switch].add(bool(_lookup(overrides, switch, _lookup(defaults, switch, None))))
    assert {s: v for s, v in seen.items() if v != {True, False}} == {}


def _lookup(values: dict[str, Any], dotted: str, default: Any) -> Any:
    node: Any = values
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


# --- what gets rendered ---------------------------------------------------------------------


@ci_params
def test_pods_are_restricted_probed_and_sized(helm: Helm, values: Path) -> None:
    """Beyond Pod Security "restricted" (which the apiserver checks in test_platform): probes, resources."""
    manifests = helm.template(values=values)
    specs = pod_specs(manifests)
    assert specs
    for where, spec in specs:
        pod_ctx = spec["securityContext"]
        assert pod_ctx["runAsNonRoot"] is True, where
        assert isinstance(pod_ctx["runAsUser"], int), where
        assert pod_ctx["runAsUser"] > 0, where
        assert pod_ctx["seccompProfile"]["type"] == "RuntimeDefault", where
        for container in spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx["capabilities"]["drop"] == ["ALL"], where
            assert "memory" in container["resources"]["limits"], where
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", container["image"]), container["image"]
            if where.startswith("Deployment/"):
                assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", where
                assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", where
                assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], where


def test_operator_runs_alone(helm: Helm) -> None:
    """kopf has no leader election: one replica, and the old pod is gone before a new one starts."""
    deployment = one(helm.template(values=ci_values("all-on")), "Deployment", "r-ucim-operator")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["UCIM_OPERATOR_METRICS_HOST"]["value"] == "0.0.0.0"  # noqa: S104  (probes and scrapes)
    assert env["UCIM_OPERATOR_NAMESPACE"]["value"] == "ucim"
    assert env["UCIM_OPERATOR_CORE_REFRESH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "r-ucim",
        "key": "core-refresh-token",
    }


# Env variables the chart already sets for settings another issue is adding. The test fails once
# such a setting exists, so that the entry is removed here.
PENDING_SETTINGS: dict[str, str] = {}


def test_chart_env_is_settings(helm: Helm) -> None:
    """Every UCIM_* variable the chart sets is a field of the component's settings (no silent typos)."""
    manifests = helm.template(values=ci_values("all-on"))
    unknown, arrived = [], []
    for deployment, prefix, settings in (
        ("r-ucim-gateway", "UCIM_GATEWAY_", GatewaySettings),
        ("r-ucim-operator", "UCIM_OPERATOR_", OperatorSettings),
    ):
        container = one(manifests, "Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]
        for name in (e["name"] for e in container["env"] if e["name"].startswith(prefix)):
            is_field = name.removeprefix(prefix).split("__")[0].lower() in settings.model_fields
            if name in PENDING_SETTINGS and is_field:
                arrived.append(name)
            elif name not in PENDING_SETTINGS and not is_field:
                unknown.append(name)
    assert unknown == [], "the chart sets variables its components do not read"
    assert arrived == [], "these settings exist now: remove them from PENDING_SETTINGS"


def test_rbac_is_split_by_purpose(helm: Helm) -> None:
    manifests = helm.template(values=ci_values("all-on"))
    assert find(manifests, "ClusterRole") == []
    assert find(manifests, "ClusterRoleBinding") == []
    roles = {r["metadata"]["name"]: r["rules"] for r in find(manifests, "Role")}
    assert set(roles) == {"r-ucim-operator", "r-ucim-gateway", "r-ucim-bridge"}

    def verbs(role: str, resource: str) -> set[str]:
        return {v for rule in roles[role] if resource in rule["resources"] for v in rule["verbs"]}

    for role, rules in roles.items():
        for rule in rules:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], role
    # /status is granted separately, only to the writers of status.
    assert verbs("r-ucim-operator", "ucloudjobs/status") >= {"patch"}
    assert verbs("r-ucim-bridge", "ucloudjobs/status") >= {"patch"}
    assert verbs("r-ucim-bridge", "userinstances/status") >= {"patch"}
    assert verbs("r-ucim-operator", "userinstances/status") == set()  # the bridge is its only writer
    assert verbs("r-ucim-gateway", "ucloudjobs/status") == set()
    # Events: create only.
    assert verbs("r-ucim-operator", "events") == {"create"}
    assert verbs("r-ucim-bridge", "events") == {"create"}
    # The bridge creates nothing but its Lease and deletes only the instance of a user whose connection
    # expired; only the gateway deletes jobs (a failed start).
    assert verbs("r-ucim-bridge", "ucloudjobs") == {"get", "list", "watch", "patch"}
    assert verbs("r-ucim-bridge", "userinstances") == {"get", "list", "watch", "patch", "delete"}
    assert verbs("r-ucim-bridge", "leases") == {"get", "create", "patch"}
    assert verbs("r-ucim-gateway", "leases") == {"get", "list", "watch"}
    # Connections: the gateway creates them and records Core's approval; the bridge maps them.
    # The gateway waits for what it asked for by watching that one object.
    assert verbs("r-ucim-gateway", "userconnections") == {"create", "get", "list", "watch", "patch"}
    assert verbs("r-ucim-gateway", "userconnections/status") == {"get", "patch"}
    assert verbs("r-ucim-bridge", "userconnections") == {"get", "list", "watch", "patch"}
    assert verbs("r-ucim-bridge", "userconnections/status") == {"get", "patch"}
    # The operator tells Core when a connection ends and records it there (status.cleared).
    assert verbs("r-ucim-operator", "userconnections") == {"get", "list", "watch"}
    assert verbs("r-ucim-operator", "userconnections/status") == {"get", "patch"}
    assert "delete" in verbs("r-ucim-gateway", "ucloudjobs")
    assert "delete" not in verbs("r-ucim-operator", "ucloudjobs")
    bindings = {b["metadata"]["name"]: b["subjects"][0]["name"] for b in find(manifests, "RoleBinding")}
    assert bindings == {
        "r-ucim-operator": "r-ucim-operator",
        "r-ucim-gateway": "r-ucim-gateway",
        "r-ucim-bridge": "r-ucim-bridge",
    }


def test_bridge_identity_has_a_token_secret(helm: Helm) -> None:
    manifests = helm.template(values=ci_values("minimal"))
    account = one(manifests, "ServiceAccount", "r-ucim-bridge")
    assert account["automountServiceAccountToken"] is False
    token = one(manifests, "Secret", "r-ucim-bridge-token")
    assert token["type"] == "kubernetes.io/service-account-token"
    assert token["metadata"]["annotations"]["kubernetes.io/service-account.name"] == "r-ucim-bridge"
    assert find(helm.template(values=ci_values("existing-secret")), "Secret", "r-ucim-bridge-token") == []


def test_secrets_come_from_values_or_an_existing_secret(helm: Helm) -> None:
    own = one(helm.template(values=ci_values("all-on")), "Secret", "r-ucim")
    assert set(own["data"]) == {"core-public-key", "core-refresh-token", "ingress-token", "web-session-key"}
    generated = one(helm.template(values=ci_values("minimal")), "Secret", "r-ucim")
    assert len(generated["data"]["ingress-token"]) >= 48, "an empty ingressToken is generated"
    assert len(base64.b64decode(generated["data"]["web-session-key"])) == 64, "the web session key is generated"

    external = helm.template(values=ci_values("existing-secret"))
    assert find(external, "Secret", "r-ucim") == []
    for _, spec in pod_specs(external):
        for env in spec["containers"][0].get("env", []):
            if "valueFrom" in env:
                assert env["valueFrom"]["secretKeyRef"]["name"] == "ucim-credentials"


def test_gateway_ingress_has_tls(helm: Helm) -> None:
    ingress = one(helm.template("--set", "gateway.web.enabled=false", values=ci_values("all-on")), "Ingress")
    assert ingress["spec"]["tls"] == [{"hosts": ["ucim.example.org"], "secretName": "ucim-gateway-tls"}]
    assert [rule["host"] for rule in ingress["spec"]["rules"]] == ["ucim.example.org"]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "r-ucim-gateway", "port": {"name": "http"}}
    assert find(helm.template(values=ci_values("minimal")), "Ingress") == []


def test_network_policies_admit_the_test_pod(helm: Helm) -> None:
    manifests = helm.template(values=ci_values("all-on"))
    gateway = one(manifests, "NetworkPolicy", "r-ucim-gateway")
    peers = gateway["spec"]["ingress"][0]["from"]
    test_pod = one(manifests, "Pod")
    assert any(
        p.get("podSelector", {}).get("matchLabels", {}).items() <= test_pod["metadata"]["labels"].items()
        for p in peers
        if "podSelector" in p
    )
    assert one(manifests, "NetworkPolicy", "r-ucim-operator")["spec"]["policyTypes"] == ["Ingress", "Egress"]


def gateway_env(manifests: list[Manifest]) -> dict[str, str]:
    container = one(manifests, "Deployment", "r-ucim-gateway")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "<secret>") for e in container["env"]}


def test_gateway_public_url_comes_from_the_ingress_or_the_value(helm: Helm) -> None:
    assert (
        gateway_env(helm.template(values=ci_values("all-on")))["UCIM_GATEWAY_PUBLIC_URL"] == "https://ucim.example.org"
    )
    chosen = helm.template("--set", "gateway.publicUrl=https://files.example.org/", values=ci_values("all-on"))
    assert gateway_env(chosen)["UCIM_GATEWAY_PUBLIC_URL"] == "https://files.example.org"
    assert "UCIM_GATEWAY_PUBLIC_URL" not in gateway_env(helm.template(values=ci_values("minimal")))


def test_gateway_connection_settings(helm: Helm) -> None:
    env = gateway_env(
        helm.template(
            "--set",
            "gateway.connectionExpireAfterMs=86400000",
            "--set",
            "gateway.autoConnect=false",
            values=ci_values("minimal"),
        )
    )
    assert env["UCIM_GATEWAY_CONNECTION_EXPIRE_AFTER_MS"] == "86400000"
    assert env["UCIM_GATEWAY_AUTO_CONNECT"] == "false"
    with pytest.raises(AssertionError, match="projectDrives"):  # project drives come from Core's projects now
        helm.template("--set-json", 'gateway.projectDrives=[{"project": "p-1", "group": "g"}]',
                      values=ci_values("minimal"))  # fmt: skip


def test_the_extension_policy_reaches_the_gateway_as_it_reads_it(helm: Helm, monkeypatch: pytest.MonkeyPatch) -> None:
    default = gateway_env(helm.template(values=ci_values("minimal")))
    assert default["UCIM_GATEWAY_EXTENSION__ENABLED"] == "true"
    assert "UCIM_GATEWAY_EXTENSION__MAX_TOTAL_MINUTES" not in default
    env = gateway_env(
        helm.template(
            "--set", "gateway.extension.maxTotalMinutes=10080",
            "--set", "gateway.extension.maxPerRequestMinutes=600",
            "--set-json", 'gateway.extension.partitionMaxTotalMinutes={"gpu": 2880}',
            values=ci_values("minimal"),
        )
    )  # fmt: skip
    for name, value in env.items():
        if name.startswith("UCIM_GATEWAY_EXTENSION__"):
            monkeypatch.setenv(name, value)
    assert GatewaySettings().extension == ExtensionPolicy(
        max_per_request_minutes=600, max_total_minutes=10080, partition_max_total_minutes={"gpu": 2880}
    )
    with pytest.raises(AssertionError, match="maxPerRequestMinutes"):
        helm.template("--set", "gateway.extension.maxPerRequestMinutes=0", values=ci_values("minimal"))


# --- web interfaces and VNC ------------------------------------------------------------------


def gateway_env_sources(manifests: list[Manifest]) -> dict[str, Any]:
    container = one(manifests, "Deployment", "r-ucim-gateway")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_gateway_serves_web_interfaces_on_the_wildcard_domain(helm: Helm) -> None:
    env = gateway_env_sources(helm.template(values=ci_values("all-on")))
    assert env["UCIM_GATEWAY_WEB_SUFFIX"] == ".apps.example.org"
    assert env["UCIM_GATEWAY_WEB_PREFIX"] == "job-"
    assert env["UCIM_GATEWAY_WEB_SESSION_SECONDS"] == "86400"
    assert env["UCIM_GATEWAY_WEB_SESSION_KEY"] == {"secretKeyRef": {"name": "r-ucim", "key": "web-session-key"}}
    # A month, as helm would otherwise print a float of it (2.592e+06).
    month = helm.template("--set", "gateway.web.sessionSeconds=2592000", values=ci_values("all-on"))
    assert gateway_env_sources(month)["UCIM_GATEWAY_WEB_SESSION_SECONDS"] == "2592000"


def test_web_interfaces_off_leave_vnc_to_the_key(helm: Helm) -> None:
    """Without gateway.web no host is served; VNC needs only the key, which the chart's own Secret always has."""
    env = gateway_env_sources(helm.template(values=ci_values("minimal")))
    assert "UCIM_GATEWAY_WEB_SUFFIX" not in env
    assert "UCIM_GATEWAY_WEB_PREFIX" not in env
    assert env["UCIM_GATEWAY_WEB_SESSION_KEY"] == {"secretKeyRef": {"name": "r-ucim", "key": "web-session-key"}}
    # An existing Secret may lack the key while web interfaces are off (no VNC then), never when they are on.
    external = gateway_env_sources(helm.template(values=ci_values("existing-secret")))
    assert external["UCIM_GATEWAY_WEB_SESSION_KEY"]["secretKeyRef"] == {
        "name": "ucim-credentials",
        "key": "web-session-key",
        "optional": True,
    }
    web_on = helm.template(
        "--set", "gateway.web.enabled=true", "--set", "gateway.web.domainSuffix=.apps.example.org",
        "--set", "gateway.publicUrl=https://ucim.example.org", values=ci_values("existing-secret"),
    )  # fmt: skip
    assert gateway_env_sources(web_on)["UCIM_GATEWAY_WEB_SESSION_KEY"]["secretKeyRef"] == {
        "name": "ucim-credentials",
        "key": "web-session-key",
    }


def test_ingress_routes_the_wildcard_host_with_its_certificate(helm: Helm) -> None:
    ingress = one(helm.template(values=ci_values("all-on")), "Ingress")
    assert ingress["spec"]["tls"] == [
        {"hosts": ["ucim.example.org"], "secretName": "ucim-gateway-tls"},
        {"hosts": ["*.apps.example.org"], "secretName": "ucim-apps-wildcard-tls"},
    ]
    rules = {rule["host"]: rule["http"]["paths"] for rule in ingress["spec"]["rules"]}
    assert set(rules) == {"ucim.example.org", "*.apps.example.org"}
    assert rules["*.apps.example.org"] == [
        {
            "path": "/",
            "pathType": "Prefix",
            "backend": {"service": {"name": "r-ucim-gateway", "port": {"name": "http"}}},
        }
    ]
    # Without a certificate Secret the rule stays, without a TLS entry of its own.
    bare = one(helm.template("--set", "gateway.web.tls.secretName=", values=ci_values("all-on")), "Ingress")
    assert [t["hosts"] for t in bare["spec"]["tls"]] == [["ucim.example.org"]]
    assert "*.apps.example.org" in [rule["host"] for rule in bare["spec"]["rules"]]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["gateway.web.enabled=true"], "gateway.web.enabled needs gateway.web.domainSuffix"),
        (
            ["gateway.web.enabled=true", "gateway.web.domainSuffix=.apps.example.org"],
            "gateway.web.enabled needs gateway.publicUrl or gateway.ingress.enabled",
        ),
    ],
)
def test_web_interfaces_need_a_domain_and_a_public_url(helm: Helm, flags: list[str], message: str) -> None:
    sets = [arg for flag in flags for arg in ("--set", flag)]
    result = helm.run("template", "r", str(CHART), "-f", str(ci_values("minimal")), *sets, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_storage_accounting_reaches_the_operator(helm: Helm) -> None:
    manifests = helm.template("--set", "provider.storageAccounted=true", values=ci_values("minimal"))
    container = one(manifests, "Deployment", "r-ucim-operator")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["UCIM_OPERATOR_STORAGE_ACCOUNTED"] == "true"


def test_gateway_may_reach_core(helm: Helm) -> None:
    """The gateway approves connections and registers drives at Core, so its egress lets it through."""
    policy = one(helm.template(values=ci_values("all-on")), "NetworkPolicy", "r-ucim-gateway")
    blocks = [peer["ipBlock"]["cidr"] for rule in policy["spec"]["egress"] for peer in rule.get("to", [])]
    assert "192.0.2.0/24" in blocks


# --- CRDs -----------------------------------------------------------------------------------


def test_chart_crds_are_a_copy_of_the_repository_crds() -> None:
    """crds/ is the source of truth; charts/ucim/files/crds/ must equal it, byte for byte."""
    assert [p.name for p in CHART_CRDS] == [p.name for p in CRDS]
    stale = [p.name for p, q in zip(CRDS, CHART_CRDS, strict=True) if p.read_bytes() != q.read_bytes()]
    assert stale == [], "run: cp crds/*.yaml charts/ucim/files/crds/"


@pytest.mark.parametrize("keep", [True, False])
def test_rendered_crds_equal_the_repository_crds(helm: Helm, keep: bool) -> None:
    manifests = helm.template("--set", f"crds.keep={str(keep).lower()}", values=ci_values("minimal"))
    rendered = {crd["metadata"]["name"]: crd for crd in find(manifests, "CustomResourceDefinition")}
    assert len(rendered) == len(CRDS)
    for path in CRDS:
        source = yaml.safe_load(path.read_text())
        crd = rendered[source["metadata"]["name"]]
        annotations = crd["metadata"].pop("annotations", {})
        labels = crd["metadata"].pop("labels")
        assert crd == source, f"the rendered {path.name} differs from crds/"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert (annotations.get("helm.sh/resource-policy") == "keep") is keep


def test_crds_can_be_left_out(helm: Helm) -> None:
    assert find(helm.template(values=ci_values("existing-secret")), "CustomResourceDefinition") == []


# --- monitoring -----------------------------------------------------------------------------


def test_prometheus_rule_is_the_rules_file(helm: Helm) -> None:
    """The PrometheusRule carries prometheus/rules.yaml, with runbook links and labels from values."""
    rule = one(helm.template(values=ci_values("all-on")), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    expected = load_rules()
    for group in expected["groups"]:
        for alert in group["rules"]:
            alert["labels"]["team"] = "hpc"
            name = alert["alert"]
            alert["annotations"]["runbook_url"] = f"https://runbooks.example.org/ucim/{name}.md"
    assert rule["spec"] == expected


def test_dashboards_become_labelled_config_maps(helm: Helm) -> None:
    manifests = helm.template(
        "--set", "dashboards.label=my_dashboards", "--set", "dashboards.labelValue=yes", values=ci_values("all-on")
    )
    maps = find(manifests, "ConfigMap")
    assert sorted(m["metadata"]["name"] for m in maps) == sorted(f"r-ucim-dashboard-{p.stem}" for p in DASHBOARDS)
    for config_map in maps:
        assert config_map["metadata"]["labels"]["my_dashboards"] == "yes"
        ((key, text),) = config_map["data"].items()
        assert json.loads(text) == json.loads((CHART / "dashboards" / key).read_text())


def test_service_monitor_scrapes_both_components(helm: Helm) -> None:
    manifests = helm.template(values=ci_values("all-on"))
    monitor = one(manifests, "ServiceMonitor")
    ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    selector = monitor["spec"]["selector"]["matchLabels"]
    services: list[Manifest] = find(manifests, "Service")
    scraped = {
        port["name"]
        for service in services
        if selector.items() <= service["metadata"]["labels"].items()
        for port in service["spec"]["ports"]
        if port["name"] in ports
    }
    assert scraped == {"http", "metrics"}
    scrape = one(manifests, "ScrapeConfig")
    assert scrape["spec"]["staticConfigs"][0]["targets"] == ["frontend-1.example.org:9102"]
