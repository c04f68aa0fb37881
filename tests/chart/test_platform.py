"""The chart against the local platform's real kube-apiserver (v1.36), in restricted namespaces.

There is no kubelet, so pods never run; what is checked is that the API accepts every object
(server-side validation with strict field checking, admission, Pod Security) and that `helm
install` / `helm uninstall` do what the chart promises. The platform's CRDs were applied by
hack/local_platform.py; the install test lets the release adopt them (`--take-ownership`),
checks that the uninstall keeps them, and hands them back unchanged.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chart.helm import CHART, CHART_CRDS, CI_VALUES, CRDS, Helm, ci_values, parse_manifests
from tests.support.platform import Platform

pytestmark = pytest.mark.usefixtures("monitoring_crds")

SERVER_DRY_RUN = (
    "apply",
    "--server-side",
    "--force-conflicts",
    "--field-manager=ucim-chart-test",
    "--dry-run=server",
    "--validate=strict",
    "-f",
    "-",
)


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name.removesuffix("-values.yaml"))
def test_apiserver_accepts_every_object(
    helm: Helm, platform: Platform, restricted_namespace: str, values: Path
) -> None:
    """Each values file renders objects the apiserver accepts, with no warning (Pod Security included).

    The helm test pod is a Pod, so the restricted profile is enforced on it; for Deployments the
    apiserver only warns, hence the check on the output.
    """
    rendered = helm.template_text(values=values, namespace=restricted_namespace)
    result = platform.kubectl(*SERVER_DRY_RUN, stdin=rendered, check=False)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    applied = [line for line in result.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(applied) == len(parse_manifests(rendered))


def test_a_pod_security_violation_would_be_caught(helm: Helm, platform: Platform, restricted_namespace: str) -> None:
    """The check above is meaningful: a non-restricted pod spec is flagged by this apiserver."""
    rendered = helm.template_text(
        "--set",
        "securityContext.allowPrivilegeEscalation=true",
        values=ci_values("minimal"),
        namespace=restricted_namespace,
    )
    result = platform.kubectl(*SERVER_DRY_RUN, stdin=rendered, check=False)
    assert 'would violate PodSecurity "restricted:latest"' in result.stderr
    assert 'pods "r-ucim-test-gateway" is forbidden' in result.stderr


@pytest.fixture
def crds_handed_back(platform: Platform) -> Iterator[None]:
    """Restore the platform's CRDs' labels and annotations after a release adopted them."""
    if [p.read_bytes() for p in CHART_CRDS] != [p.read_bytes() for p in CRDS]:
        pytest.fail(
            "charts/ucim/files/crds/ differs from crds/ (cp crds/*.yaml charts/ucim/files/crds/): "
            "installing it would change the platform's CRDs"
        )
    names = [f"{p.name.removesuffix('.yaml')}" for p in CRDS]
    before = {name: _crd_metadata(platform, name) for name in names}
    yield
    for name, (old_labels, old_annotations) in before.items():
        now_labels, now_annotations = _crd_metadata(platform, name)
        patch = {
            "metadata": {
                "labels": {k: old_labels.get(k) for k in now_labels if now_labels[k] != old_labels.get(k)},
                "annotations": {
                    k: old_annotations.get(k) for k in now_annotations if now_annotations[k] != old_annotations.get(k)
                },
            }
        }
        platform.kubectl("patch", "crd", name, "--type=merge", "-p", json.dumps(patch))


def _crd_metadata(platform: Platform, name: str) -> tuple[dict[str, str], dict[str, str]]:
    meta = platform.get("", f"crd/{name}")["metadata"]
    return dict(meta.get("labels", {})), dict(meta.get("annotations", {}))


def test_install_creates_everything_and_uninstall_keeps_the_crds(
    cluster_helm: Helm, platform: Platform, restricted_namespace: str, crds_handed_back: None
) -> None:
    ns = restricted_namespace
    install = cluster_helm.run(
        "install", "r", str(CHART), "--namespace", ns, "-f", str(ci_values("all-on")), "--take-ownership"
    )
    output = install.stdout + install.stderr
    assert "STATUS: deployed" in output
    # NOTES.txt tells how to connect the bridge, with this release's names.
    assert f"NS={ns} SECRET=r-ucim-bridge-token" in install.stdout
    assert "make-bridge-kubeconfig.sh" in install.stdout
    assert "PodSecurity" not in output and "Warning" not in output, output

    # Every object of the release exists.
    manifest = cluster_helm.run("get", "manifest", "r", "--namespace", ns).stdout
    kinds = {m["kind"] for m in parse_manifests(manifest)}
    assert kinds >= {
        "CustomResourceDefinition",
        "Deployment",
        "Service",
        "Ingress",
        "Role",
        "RoleBinding",
        "ServiceAccount",
        "Secret",
        "NetworkPolicy",
        "ServiceMonitor",
        "PrometheusRule",
        "ScrapeConfig",
        "ConfigMap",
        "PodDisruptionBudget",
    }
    found = platform.kubectl("get", "-f", "-", "-o", "name", stdin=manifest)
    assert len(found.stdout.split()) == len(parse_manifests(manifest))

    # The roles work as intended on the real apiserver (a fresh binding takes about a second).
    _assert_can(
        platform,
        ns,
        "operator",
        {
            "patch ucloudjobs/status": True,
            "create events": True,
            "create events.events.k8s.io": True,
            "create userinstances": True,
            "delete ucloudjobs": False,
            "list secrets": False,
        },
    )
    _assert_can(
        platform,
        ns,
        "gateway",
        {
            "create ucloudjobs": True,
            "delete ucloudjobs": True,
            "patch ucloudjobs/status": False,
            "watch ucloudjobs": True,  # it waits for a submission by watching that one job
            "list ucloudjobs": True,  # the interactive jobs (ucim.io/interactive), watched for web and VNC
            "watch leases": True,  # the bridges' heartbeats
            "create leases": False,
            "create userconnections": True,
            "patch userconnections/status": True,
            "delete userconnections": False,
        },
    )
    _assert_can(
        platform,
        ns,
        "bridge",
        {
            "watch userinstances": True,
            "patch ucloudjobs/status": True,
            "create ucloudjobs": False,
            "delete userinstances": True,  # the instance of a user whose connection expired
            "delete ucloudjobs": False,
            "create leases": True,  # its own heartbeat
            "create events.events.k8s.io": True,  # what it changed on the frontend
            "patch userconnections": True,
            "create userconnections": False,
            "get secrets": False,
        },
    )

    uninstall = cluster_helm.run("uninstall", "r", "--namespace", ns)
    assert "kept due to the resource policy" in uninstall.stdout
    for crd in CRDS:
        platform.kubectl("get", "crd", crd.name.removesuffix(".yaml"))
    left = platform.kubectl("get", "deploy,svc,role,rolebinding,sa,secret,cm", "--namespace", ns, "-o", "name")
    assert [line for line in left.stdout.split() if "r-ucim" in line] == []


def test_generated_secrets_survive_an_upgrade(
    cluster_helm: Helm, platform: Platform, restricted_namespace: str
) -> None:
    """The generated ingress token and web session key are read back on upgrade (`lookup`), never made anew.

    A new ingress token would lock the bridge out until its file is replaced; a new web session key would end
    every open web session and VNC URL. The CRDs are left out: the platform's stay as they are.
    """
    ns = restricted_namespace
    release = ("r", str(CHART), "--namespace", ns, "-f", str(ci_values("minimal")), "--set", "crds.enabled=false")
    cluster_helm.run("install", *release)
    installed = platform.get(ns, "secret/r-ucim")["data"]
    assert len(base64.b64decode(installed["web-session-key"])) == 64
    web_on = (
        "--set", "gateway.web.enabled=true", "--set", "gateway.web.domainSuffix=.apps.example.org",
        "--set", "gateway.publicUrl=https://ucim.example.org",
    )  # fmt: skip
    cluster_helm.run("upgrade", *release, *web_on)
    upgraded = platform.get(ns, "secret/r-ucim")["data"]
    assert upgraded["ingress-token"] == installed["ingress-token"]
    assert upgraded["web-session-key"] == installed["web-session-key"]
    cluster_helm.run("uninstall", "r", "--namespace", ns)


def _assert_can(platform: Platform, ns: str, who: str, expected: dict[str, bool]) -> None:
    account = f"system:serviceaccount:{ns}:r-ucim-{who}"
    for action, allowed in expected.items():
        verb, resource = action.split()
        resource, _, subresource = resource.partition("/")
        args = [verb, resource, *([f"--subresource={subresource}"] if subresource else [])]
        deadline = time.monotonic() + 5
        while True:
            answer = platform.kubectl("auth", "can-i", *args, "--namespace", ns, "--as", account, check=False)
            granted = answer.stdout.strip() == "yes"
            # A new RoleBinding takes about a second to take effect: retry a "no" that should be a "yes".
            if granted is allowed or allowed is False or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert granted is allowed, f"{who} {action}: {answer.stdout}{answer.stderr}"
