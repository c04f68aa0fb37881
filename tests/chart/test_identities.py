"""The chart's identities are enough for the real components, and the frontend recipe works.

The chart is installed into a restricted namespace on the local platform. Then the real
``ucim-bridge``, ``ucim-operator`` and ``ucim-gateway`` run as local processes (no kubelet
here), each with the credentials the chart gives it: the bridge with the kubeconfig that
``deploy/frontend/make-bridge-kubeconfig.sh`` writes from its token Secret (exactly what
NOTES.txt tells an admin to do), the operator and the gateway with tokens of their
ServiceAccounts. A job for alice must go all the way to SUCCESS at Core's stand-in, and no
component may have been refused anything by the apiserver.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.chart.helm import CHART, REPO, Helm, ci_values
from tests.support.platform import Platform
from ucim.common.protocol import JobState
from ucim.testing.core_standin import CoreStandIn
from ucim.testing.stack import PROVIDER, component_env

INGRESS_TOKEN = secrets.token_urlsafe(32)
COMPONENTS = ("ucim-bridge", "ucim-operator", "ucim-gateway")
HEALTH_PORTS = {
    "ucim-gateway": "UCIM_GATEWAY_PORT",
    "ucim-operator": "UCIM_OPERATOR_METRICS_PORT",
    "ucim-bridge": "UCIM_BRIDGE_METRICS_PORT",
}
# kopf's cluster-wide "scanning" of namespaces and CRDs, which the chart does not grant (see
# templates/operator/rbac.yaml): unless the operator sets `settings.scanning.disabled`, kopf
# tries, is refused, retries with backoff (about a minute) and falls back to the one namespace.
KOPF_SCANNING = re.compile(
    r"(namespaces|customresourcedefinitions)[\w.]* is forbidden: .* at the cluster scope"
    r"|Not enough permissions to (list namespaces|watch for (namespaces|resources))"
)
REFUSED = re.compile(r"\b403\b|Forbidden|forbidden")


@dataclass(frozen=True)
class Release:
    namespace: str
    kubeconfigs: dict[str, Path]


def _service_account_kubeconfig(platform: Platform, namespace: str, account: str, folder: Path) -> Path:
    token = platform.kubectl("create", "token", account, "--namespace", namespace, "--duration=1h").stdout.strip()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "ucim",
                "cluster": {
                    "server": platform.env["UCIM_KUBE_SERVER"],
                    "certificate-authority": platform.env["UCIM_KUBE_CA"],
                },
            }
        ],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "ucim", "context": {"cluster": "ucim", "user": account, "namespace": namespace}}],
        "current-context": "ucim",
    }
    path = folder / f"{account}.kubeconfig"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


def _bridge_kubeconfig(platform: Platform, namespace: str, folder: Path) -> Path:
    """The frontend recipe: make-bridge-kubeconfig.sh, run as an admin would."""
    deadline = time.monotonic() + 30
    while not platform.kubectl(
        "get", "secret", "r-ucim-bridge-token", "--namespace", namespace, "-o", "jsonpath={.data.token}", check=False
    ).stdout:
        assert time.monotonic() < deadline, "the token controller never filled r-ucim-bridge-token"
        time.sleep(0.2)
    out = folder / "bridge.kubeconfig"
    env = {**platform.process_env(), "PATH": f"{platform.env['UCIM_BIN_DIR']}:{os.environ['PATH']}"}
    script = REPO / "deploy" / "frontend" / "make-bridge-kubeconfig.sh"
    result = subprocess.run(
        ["bash", str(script), "-n", namespace, "-r", "r", "-s", platform.env["UCIM_KUBE_SERVER"], "-o", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    return out


@pytest.fixture(scope="module")
def release(platform: Platform, cluster_helm: Helm) -> Iterator[Release]:
    namespace = f"ucim-id-{uuid.uuid4().hex[:8]}"
    platform.kubectl("create", "namespace", namespace)
    platform.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    folder = Path(tempfile.mkdtemp(prefix="ucim-identities-"))
    try:
        # The platform owns the CRDs already; this release installs everything else.
        cluster_helm.run(
            "install",
            "r",
            str(CHART),
            "--namespace",
            namespace,
            "-f",
            str(ci_values("minimal")),
            "--set",
            "crds.enabled=false",
            "--set",
            f"ingressToken={INGRESS_TOKEN}",
        )
        yield Release(
            namespace=namespace,
            kubeconfigs={
                "ucim-bridge": _bridge_kubeconfig(platform, namespace, folder),
                "ucim-operator": _service_account_kubeconfig(platform, namespace, "r-ucim-operator", folder),
                "ucim-gateway": _service_account_kubeconfig(platform, namespace, "r-ucim-gateway", folder),
            },
        )
    finally:
        # Finalizers of a stopped operator would keep the namespace Terminating forever.
        for kind in ("ucloudjobs", "userinstances"):
            names = platform.kubectl("get", kind, "--namespace", namespace, "-o", "name", check=False).stdout.split()
            for name in names:
                platform.kubectl(
                    "patch",
                    name,
                    "--namespace",
                    namespace,
                    "--type=merge",
                    "-p",
                    '{"metadata":{"finalizers":null}}',
                    check=False,
                )
        cluster_helm.run("uninstall", "r", "--namespace", namespace, check=False)
        platform.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        shutil.rmtree(folder, ignore_errors=True)


def test_the_bridge_kubeconfig_is_the_bridge_identity(platform: Platform, release: Release) -> None:
    """What the frontend gets can do the bridge's work and nothing more."""
    env = {**platform.process_env(), "KUBECONFIG": str(release.kubeconfigs["ucim-bridge"])}
    kubectl = [platform.kubectl_path, "--namespace", release.namespace]

    def can(*args: str) -> bool:
        result = subprocess.run(
            [*kubectl, "auth", "can-i", *args], env=env, capture_output=True, text=True, check=False
        )
        return result.stdout.strip() == "yes"

    whoami = subprocess.run(
        [*kubectl, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert whoami.stdout == f"system:serviceaccount:{release.namespace}:r-ucim-bridge"
    assert can("watch", "userinstances")
    assert can("patch", "ucloudjobs", "--subresource=status")
    assert not can("create", "ucloudjobs")
    assert not can("get", "secrets")
    assert not can("list", "ucloudjobs", "--namespace", "default")


@contextlib.asynccontextmanager
async def _components(envs: dict[str, dict[str, str]], logs: Path) -> AsyncIterator[dict[str, Path]]:
    processes: list[asyncio.subprocess.Process] = []
    files = {name: logs / f"{name}.log" for name in COMPONENTS}
    try:
        for name in COMPONENTS:  # the bridge first: the others need Ready instances
            with files[name].open("ab") as out:
                process = await asyncio.create_subprocess_exec(
                    name, env=envs[name], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            processes.append(process)
            await _wait_healthy(f"http://127.0.0.1:{envs[name][HEALTH_PORTS[name]]}/healthz", process, files[name])
        yield files
    finally:
        for process in reversed(processes):
            if process.returncode is None:
                process.terminate()
                try:
                    async with asyncio.timeout(15):
                        await process.wait()
                except TimeoutError:
                    process.kill()
                    await process.wait()


async def _wait_healthy(url: str, process: asyncio.subprocess.Process, log: Path) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            assert process.returncode is None, f"{log.name} exited:\n{log.read_text()[-3000:]}"
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never answered:\n{log.read_text()[-3000:]}")


async def test_a_job_succeeds_with_only_the_charts_identities(platform: Platform, release: Release) -> None:
    logs = Path(tempfile.mkdtemp(prefix="ucim-identities-logs-"))
    socket_dir = Path("/run") / f"ucim-{release.namespace}"
    async with CoreStandIn(PROVIDER, secrets.token_urlsafe(16)) as core:
        await core.start()
        envs = component_env(platform.env, release.namespace, core, INGRESS_TOKEN, socket_dir)
        for name, kubeconfig in release.kubeconfigs.items():
            envs[name]["KUBECONFIG"] = str(kubeconfig)
        envs["ucim-bridge"]["UCIM_BRIDGE_KUBECONFIG"] = str(release.kubeconfigs["ucim-bridge"])
        envs["ucim-operator"]["UCIM_OPERATOR_REGISTER_PRODUCTS"] = "false"
        core.provider_url = f"http://127.0.0.1:{envs['ucim-gateway']['UCIM_GATEWAY_PORT']}"
        try:
            async with _components(envs, logs) as files:
                job_id = str(int(time.time() * 1000))
                job = core.make_job(job_id, "alice", ("run-command", "1"), {"command": "echo chart identities"})
                await core.create_jobs([job])
                states: set[JobState] = set()
                # Seconds with the admin's credentials; about a minute while kopf retries its
                # forbidden scanning (see test_the_operator_is_never_refused).
                for _ in range(1200):
                    states = {u.state for u in core.updates_for(job_id) if u.state is not None}
                    if JobState.SUCCESS in states:
                        break
                    await asyncio.sleep(0.1)
                everything = "\n".join(f"--- {f.name}\n{f.read_text()[-4000:]}" for f in files.values())
                assert JobState.SUCCESS in states, everything
            for name, path in files.items():
                refused = [
                    line
                    for line in path.read_text().splitlines()
                    if REFUSED.search(line) and not KOPF_SCANNING.search(line)
                ]
                assert refused == [], f"{name} was refused by the apiserver:\n" + "\n".join(refused[:10])
        finally:
            shutil.rmtree(socket_dir, ignore_errors=True)
            shutil.rmtree(logs, ignore_errors=True)


async def test_the_operator_is_never_refused(platform: Platform, release: Release) -> None:
    """With its namespaced Role only, the operator starts at once and asks for nothing it may not have."""
    folder = Path(tempfile.mkdtemp(prefix="ucim-operator-"))
    async with CoreStandIn(PROVIDER, secrets.token_urlsafe(16)) as core:
        await core.start()
        env = component_env(platform.env, release.namespace, core, INGRESS_TOKEN, folder)["ucim-operator"]
        env |= {"KUBECONFIG": str(release.kubeconfigs["ucim-operator"]), "UCIM_OPERATOR_REGISTER_PRODUCTS": "false"}
        log = folder / "operator.log"
        with log.open("ab") as out:
            process = await asyncio.create_subprocess_exec(
                "ucim-operator", env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            await _wait_healthy(f"http://127.0.0.1:{env['UCIM_OPERATOR_METRICS_PORT']}/healthz", process, log)
            await asyncio.sleep(3)
        finally:
            process.terminate()
            await process.wait()
        refused = [line for line in log.read_text().splitlines() if REFUSED.search(line)]
        shutil.rmtree(folder, ignore_errors=True)
    assert refused == []
