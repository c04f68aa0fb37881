"""ucim as the Helm chart runs it in a kind cluster (``hack/kind/up.sh``), as a ``Stack`` for the e2e tests.

``hack/kind/up.sh`` leaves a kind cluster with the release (operator and gateway pods), a Slurm
frontend container running the bridge, and ``$UCIM_KIND_DIR/kind.env`` saying where each part is.
UCloud/Core is not part of it: ``kind_stack`` plays Core in this process with ``CoreStandIn``, as
``running_stack`` does locally, and the release already points at it:

- up.sh made Core's key pair and the refresh token once (files in ``$UCIM_KIND_DIR``) and installed the
  release with that public key, that token and ``core.url = http://<kind network gateway>:<port>``;
- the stand-in loads the same private key and token and listens at that address and port on this
  machine (``UCIM_KIND_CORE_LISTEN``): the operator's pod reaches it through its node, the frontend
  container directly, both on the kind network.

So the release is never reconfigured while tests run, and the key, the token and the URL cannot drift
apart between the release and the tests; ``kind_stack`` checks that they still agree (Secret and
Deployment) and says to run up.sh again when they do not, which installs them anew.

The tests reach the gateway at the NodePort kind publishes on 127.0.0.1 (hack/kind/kind-config.yaml),
the frontend with ``docker exec`` (``Frontend(container=...)``), the operator's /metrics through a
``kubectl port-forward`` this module runs, and the bridge's at the port up.sh publishes on 127.0.0.1.
The namespace is the release's: its operator and the bridge serve that one namespace only, so the
tests share it and each one deletes its UCloudJobs at the end (as ``running_stack`` does), then the
users' connections and instances (``forget_users``), so that every test's Core meets users anew.

``kill`` crashes a component the way SIGKILL does locally: its container is killed on its node
(``crictl stop --timeout 0`` sends SIGKILL at once; no graceful shutdown) and the kubelet restarts it
in the same pod; ``start`` waits until the component is running again and Ready. The bridge is the
frontend container's main process: ``docker kill --signal KILL``, then ``docker start``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ucim.testing.core_standin import CoreKeys, CoreStandIn
from ucim.testing.stack import (
    PROVIDER,
    Frontend,
    Kubectl,
    Stack,
    forget_users,
    free_port,
    release_jobs,
    run_command,
)

# What kind.env holds; equal to env_version in hack/kind/lib.sh.
KIND_ENV_VERSION = "2"
# The e2e tests' own name for each component, and the chart's component label and container name.
CHART_COMPONENTS = {"ucim-operator": "operator", "ucim-gateway": "gateway"}
BRIDGE = "ucim-bridge"
BRIDGE_READY_URL = "http://127.0.0.1:9102/readyz"  # inside the frontend container
# Exits 0 when the URL in argv[1] answers 2xx; run inside the frontend container (which has no curl).
URL_PROBE = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)"
# A crashed container is restarted by the kubelet, after a back-off (10 s, 20 s, ...) when it crashed recently.
RESTART_TIMEOUT_SECONDS = 300
READY_TIMEOUT_SECONDS = 180
UP_HINT = "run `make kind-up` (hack/kind/up.sh; idempotent) or `make e2e-kind`, which runs it when needed"


class KindSetupError(RuntimeError):
    """The kind installation is missing, from an older up.sh, or does not agree with its kind.env."""


# --- kind.env -----------------------------------------------------------------------------------


def kind_env_path(environ: Mapping[str, str]) -> Path:
    """Where up.sh wrote kind.env: $UCIM_KIND_ENV, else in $UCIM_KIND_DIR (hack/kind/lib.sh's ``state``)."""
    if environ.get("UCIM_KIND_ENV"):
        return Path(environ["UCIM_KIND_ENV"])
    if environ.get("UCIM_KIND_DIR"):
        return Path(environ["UCIM_KIND_DIR"]) / "kind.env"
    cache = environ.get("UCIM_CACHE") or str(Path(environ.get("HOME") or Path.home()) / ".cache" / "ucim")
    return Path(cache) / "kind" / "kind.env"


def parse_env_file(text: str) -> dict[str, str]:
    """``KEY=value`` lines with shell-quoted values (bash's ``printf %q``); blank lines and ``#`` comments skipped."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            values[key] = " ".join(shlex.split(value, comments=False))
    return values


def split_host_port(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` as (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"not host:port: {address!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def url_host_port(url: str) -> str:
    """``host:port`` of an http(s) URL (the scheme's default port when it names none)."""
    parts = urlsplit(url)
    if parts.hostname is None:
        raise ValueError(f"no host in {url!r}")
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


@dataclass(frozen=True)
class KindEnv:
    """What up.sh wrote into kind.env."""

    kubeconfig: str
    kubectl: str
    cluster: str
    namespace: str
    release: str
    gateway_url: str  # the gateway as this machine reaches it (kind's port mapping of its NodePort)
    bridge_metrics: str  # host:port of the bridge's /metrics, published on this machine
    frontend_container: str
    core_listen: tuple[str, int]  # where the tests' Core stand-in listens on this machine
    core_url: str  # the release's core.url: how the operator reaches that stand-in
    core_private_key: Path
    core_refresh_token_file: Path

    KEYS = (
        "KUBECONFIG",
        "UCIM_KIND_CLUSTER",
        "UCIM_KIND_NAMESPACE",
        "UCIM_KIND_RELEASE",
        "UCIM_KIND_GATEWAY_URL",
        "UCIM_KIND_BRIDGE_METRICS",
        "UCIM_KIND_FRONTEND_CONTAINER",
        "UCIM_KIND_CORE_LISTEN",
        "UCIM_KIND_CORE_URL",
        "UCIM_KIND_CORE_PRIVATE_KEY",
        "UCIM_KIND_CORE_REFRESH_TOKEN_FILE",
    )

    @classmethod
    def from_values(cls, values: Mapping[str, str], source: str = "kind.env") -> KindEnv:
        version = values.get("UCIM_KIND_ENV_VERSION", "1")
        if version != KIND_ENV_VERSION:
            raise KindSetupError(f"{source} was written by an older hack/kind/up.sh (version {version}): {UP_HINT}")
        missing = [key for key in cls.KEYS if not values.get(key)]
        if missing:
            raise KindSetupError(f"{source} lacks {', '.join(missing)}: {UP_HINT}")
        kubectl = values.get("UCIM_KIND_KUBECTL") or shutil.which("kubectl")
        if not kubectl:
            raise KindSetupError("kubectl is not installed (make platform-up builds one into $UCIM_CACHE/bin/current)")
        try:
            core_listen = split_host_port(values["UCIM_KIND_CORE_LISTEN"])
        except ValueError as error:
            raise KindSetupError(f"{source}: UCIM_KIND_CORE_LISTEN: {error}") from error
        return cls(
            kubeconfig=values["KUBECONFIG"],
            kubectl=kubectl,
            cluster=values["UCIM_KIND_CLUSTER"],
            namespace=values["UCIM_KIND_NAMESPACE"],
            release=values["UCIM_KIND_RELEASE"],
            gateway_url=values["UCIM_KIND_GATEWAY_URL"],
            bridge_metrics=values["UCIM_KIND_BRIDGE_METRICS"],
            frontend_container=values["UCIM_KIND_FRONTEND_CONTAINER"],
            core_listen=core_listen,
            core_url=values["UCIM_KIND_CORE_URL"],
            core_private_key=Path(values["UCIM_KIND_CORE_PRIVATE_KEY"]),
            core_refresh_token_file=Path(values["UCIM_KIND_CORE_REFRESH_TOKEN_FILE"]),
        )

    @property
    def fullname(self) -> str:
        """The prefix of the release's object names (the chart's ``ucim.fullname`` without overrides)."""
        return self.release if "ucim" in self.release else f"{self.release}-ucim"


def load_kind_env(environ: Mapping[str, str] | None = None) -> KindEnv:
    path = kind_env_path(os.environ if environ is None else environ)
    if not path.is_file():
        raise KindSetupError(f"the kind installation is not up ({path} does not exist): {UP_HINT}")
    return KindEnv.from_values(parse_env_file(path.read_text()), source=str(path))


# --- what the cluster says ------------------------------------------------------------------------


def release_mismatches(
    secret: Mapping[str, Any], operator: Mapping[str, Any], keys: CoreKeys, refresh_token: str, core_url: str
) -> list[str]:
    """How the release's Secret and operator Deployment disagree with the stand-in's key, token and URL."""
    data = secret.get("data") or {}

    def decoded(key: str) -> str | None:
        try:
            return base64.b64decode(data.get(key, ""), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None

    problems = []
    installed_key = "".join((decoded("core-public-key") or "").split())
    if installed_key not in {"".join(keys.public_key_b64().split()), "".join(keys.public_key_pem().split())}:
        problems.append("the release's Core public key is not the stand-in's")
    if decoded("core-refresh-token") != refresh_token:
        problems.append("the release's refresh token is not the stand-in's")
    pod_spec = operator.get("spec", {}).get("template", {}).get("spec", {})
    containers: list[dict[str, Any]] = pod_spec.get("containers", [])
    env: list[dict[str, Any]] = next((c.get("env", []) for c in containers if c.get("name") == "operator"), [])
    called = next((e.get("value") for e in env if e.get("name") == "UCIM_OPERATOR_CORE_URL"), None)
    if called != core_url:
        problems.append(f"the operator calls Core at {called!r}, the stand-in is at {core_url!r}")
    return problems


def container_status(pod: Mapping[str, Any], container: str) -> Mapping[str, Any]:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return next((s for s in statuses if s.get("name") == container), {})


def running_container_id(pod: Mapping[str, Any], container: str) -> str:
    """The runtime's id of ``container`` in ``pod`` (what crictl takes), if it is running."""
    status = container_status(pod, container)
    runtime_id = str(status.get("containerID") or "")
    if "running" not in (status.get("state") or {}) or "://" not in runtime_id:
        raise RuntimeError(f"container {container} of pod {pod['metadata']['name']} is not running")
    return runtime_id.partition("://")[2]


def restarts(pod: Mapping[str, Any], container: str) -> tuple[str, int]:
    """(pod uid, restart count of ``container``): what tells a restarted container from the one killed."""
    return str(pod["metadata"]["uid"]), int(container_status(pod, container).get("restartCount", 0))


def serving(pod: Mapping[str, Any], container: str) -> bool:
    """The pod is not being deleted, ``container`` runs and is ready, and the pod is Ready."""
    if pod["metadata"].get("deletionTimestamp"):
        return False
    status = container_status(pod, container)
    conditions = pod.get("status", {}).get("conditions") or []
    pod_ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return pod_ready and bool(status.get("ready")) and "running" in (status.get("state") or {})


def back_after_crash(pods: Sequence[Mapping[str, Any]], container: str, crashed: Sequence[tuple[str, int]]) -> bool:
    """Whether a pod serves again with a container other than the ones killed (``crashed``: ``restarts()``).

    That is a pod killed earlier whose container restarted since, or another pod (a replacement).
    """
    before = dict(crashed)
    for pod in pods:
        if not serving(pod, container):
            continue
        uid, count = restarts(pod, container)
        if uid not in before or count > before[uid]:
            return True
    return False


# --- the stack ------------------------------------------------------------------------------------


async def wait_http_ok(
    url: str,
    *,
    timeout: float,  # noqa: ASYNC109 - a readiness budget, reported in the error
    what: str,
    alive: Callable[[], bool] = lambda: True,
    detail: Callable[[], str] = lambda: "",
) -> None:
    """Wait until ``url`` answers 200; raise ``RuntimeError`` naming ``what`` after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while loop.time() < deadline and alive():
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{what} did not answer {url} in {timeout} s{detail()}")


@dataclass
class KindStack(Stack):
    """The release in the kind cluster and the frontend container, with Core's stand-in in this process."""

    kind: KindEnv = field(kw_only=True)
    _forward: asyncio.subprocess.Process | None = field(default=None, init=False, repr=False)
    _operator_metrics: str | None = field(default=None, init=False)
    _killed: dict[str, list[tuple[str, int]]] = field(default_factory=dict, init=False)

    # --- the components ---

    def metrics_targets(self) -> dict[str, str]:
        if self._operator_metrics is None:
            raise RuntimeError("the operator's metrics are not forwarded (kind_stack forwards them at start)")
        return {
            "ucim-gateway": url_host_port(self.gateway_url),
            "ucim-operator": self._operator_metrics,
            BRIDGE: self.kind.bridge_metrics,
        }

    def logs(self) -> str:
        parts = []
        for name, component in CHART_COMPONENTS.items():
            deployment = f"deploy/{self.kind.fullname}-{component}"
            result = self.kubectl("logs", "-n", self.namespace, deployment, "--tail", "40", check=False)
            parts.append(f"--- {name} (kubectl logs {deployment})\n{result.stdout}{result.stderr}")
        container = self.kind.frontend_container
        result = run_command(["docker", "logs", "--tail", "40", container], check=False)
        parts.append(f"--- {BRIDGE} (docker logs {container})\n{result.stdout}{result.stderr}")
        return "\n".join(parts)

    async def kill(self, name: str) -> None:
        """Kill a component hard (SIGKILL), as a crash would; the kubelet (or ``start``) brings it back."""
        if name == BRIDGE:
            await asyncio.to_thread(
                run_command, ["docker", "kill", "--signal", "KILL", self.kind.frontend_container], timeout=60
            )
            return
        component = self._component(name)
        pods = [pod for pod in await self._pods(component) if not pod["metadata"].get("deletionTimestamp")]
        if not pods:
            raise RuntimeError(f"no {name} pod to kill in namespace {self.namespace}")
        self._killed[name] = [restarts(pod, component) for pod in pods]
        for pod in pods:
            runtime_id = running_container_id(pod, component)
            # kind's nodes are containers named as the nodes; crictl talks to their containerd.
            crictl = ["docker", "exec", pod["spec"]["nodeName"], "crictl", "stop", "--timeout", "0", runtime_id]
            await asyncio.to_thread(run_command, crictl, timeout=60)

    async def start(self, name: str) -> None:
        """Wait until a killed component runs and is Ready again (the kubelet restarts it); the bridge is started."""
        if name == BRIDGE:
            await asyncio.to_thread(run_command, ["docker", "start", self.kind.frontend_container], timeout=60)
            await self._wait_bridge_ready()
            return
        component = self._component(name)
        killed = self._killed.pop(name, [])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RESTART_TIMEOUT_SECONDS
        while not back_after_crash(pods := await self._pods(component), component, killed):
            if loop.time() > deadline:
                states = [(p["metadata"]["name"], container_status(p, component)) for p in pods]
                raise RuntimeError(f"{name} is not back in {RESTART_TIMEOUT_SECONDS} s: {states}\n{self.logs()}")
            await asyncio.sleep(1)
        if component == "operator":
            await self._forward_operator_metrics()
        else:
            await wait_http_ok(f"{self.gateway_url}/healthz", timeout=READY_TIMEOUT_SECONDS, what=name)

    def _component(self, name: str) -> str:
        if name not in CHART_COMPONENTS:
            raise ValueError(f"unknown component {name!r}: one of {[*CHART_COMPONENTS, BRIDGE]}")
        return CHART_COMPONENTS[name]

    async def _pods(self, component: str) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/instance={self.kind.release},app.kubernetes.io/component={component}"
        pods = await asyncio.to_thread(self.kubectl.json, "get", "pods", "-n", self.namespace, "-l", selector)
        items: list[dict[str, Any]] = pods["items"]
        return items

    # --- readiness ---

    async def _check_release(self) -> None:
        secret, operator = await asyncio.gather(
            asyncio.to_thread(self.kubectl.json, "get", "secret", "-n", self.namespace, self.kind.fullname),
            asyncio.to_thread(
                self.kubectl.json, "get", "deployment", "-n", self.namespace, f"{self.kind.fullname}-operator"
            ),
        )
        problems = release_mismatches(secret, operator, self.core.keys, self.core.refresh_token, self.kind.core_url)
        if problems:
            mismatch = "; ".join(problems)
            raise KindSetupError(f"the release {self.kind.release} does not match kind.env: {mismatch}: {UP_HINT}")

    async def _wait_ready(self) -> None:
        for component in CHART_COMPONENTS.values():
            deployment = f"deployment/{self.kind.fullname}-{component}"
            timeout = f"--timeout={READY_TIMEOUT_SECONDS}s"
            await asyncio.to_thread(
                self.kubectl, "rollout", "status", "-n", self.namespace, deployment, timeout, timeout=240
            )
        await wait_http_ok(f"{self.gateway_url}/healthz", timeout=READY_TIMEOUT_SECONDS, what="the gateway")
        await self._wait_bridge_ready()

    async def _wait_bridge_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT_SECONDS
        while True:
            probe = await asyncio.to_thread(self._probe, BRIDGE_READY_URL)
            if probe.returncode == 0:
                return
            if loop.time() > deadline:
                container, error = self.kind.frontend_container, probe.stderr.strip()[-500:]
                raise RuntimeError(f"the bridge in {container} is not ready ({error}): {UP_HINT}")
            await asyncio.sleep(1)

    def _probe(self, url: str) -> subprocess.CompletedProcess[str]:
        """GET ``url`` from inside the frontend container (exit status 0: it answered 2xx)."""
        return self.frontend.run("python3", "-c", URL_PROBE, url, check=False, timeout=30)

    async def _check_core_reachable(self) -> None:
        """The frontend container is on the kind network, as the operator's node is: can it reach the stand-in?"""
        url = f"{self.kind.core_url}/_standin/state"
        for _ in range(3):
            probe = await asyncio.to_thread(self._probe, url)
            if probe.returncode == 0:
                return
            await asyncio.sleep(1)
        raise KindSetupError(
            f"the kind network cannot reach Core's stand-in at {url} (it listens on {self.core.url}): "
            f"a firewall on this machine in the way? ({probe.stderr.strip()[-300:]})"
        )

    async def _forward_operator_metrics(self) -> None:
        """``kubectl port-forward`` to the operator's metrics Service, on a free port of 127.0.0.1."""
        await self._stop_forwarding()
        port = free_port()
        service = f"svc/{self.kind.fullname}-operator-metrics"
        argv = self.kubectl.argv(
            "port-forward", "-n", self.namespace, "--address", "127.0.0.1", service, f"{port}:metrics"
        )
        log = self.workdir / "operator-port-forward.log"
        with log.open("ab") as out:
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        self._forward = process
        await wait_http_ok(
            f"http://127.0.0.1:{port}/healthz",
            timeout=30,
            what=f"kubectl port-forward {service}",
            alive=lambda: process.returncode is None,
            detail=lambda: f":\n{log.read_text(errors='replace')[-2000:]}",
        )
        self._operator_metrics = f"127.0.0.1:{port}"

    async def _stop_forwarding(self) -> None:
        process, self._forward, self._operator_metrics = self._forward, None, None
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


@contextlib.asynccontextmanager
async def kind_stack(env: KindEnv | None = None) -> AsyncIterator[KindStack]:
    """The kind installation up.sh made (``env``: its kind.env, read from $UCIM_KIND_DIR when None), with Core.

    The namespace is the release's (``env.namespace``). At the end the UCloudJobs made meanwhile are
    deleted while the operator runs (its finalizer cancels them in Slurm), as ``running_stack`` does.
    """
    env = env or load_kind_env()
    keys = CoreKeys.from_pem(env.core_private_key.read_bytes())
    refresh_token = env.core_refresh_token_file.read_text()  # as the release has it: the file, as it is
    workdir = Path(tempfile.mkdtemp(prefix="ucim-kind-"))
    async with CoreStandIn(PROVIDER, refresh_token, keys=keys, provider_url=env.gateway_url) as core:
        stack = KindStack(
            core=core,
            namespace=env.namespace,
            gateway_url=env.gateway_url,
            workdir=workdir,
            frontend=Frontend(container=env.frontend_container),
            kubectl=Kubectl(env.kubectl, env.kubeconfig),
            kind=env,
        )
        try:
            await stack._check_release()
            host, port = env.core_listen
            try:
                await core.start(host, port)
            except OSError as error:
                raise KindSetupError(
                    f"Core's stand-in cannot listen on {host}:{port} ({error}): another test run, or an address "
                    "this machine does not have (see UCIM_KIND_CORE_HOST and UCIM_KIND_CORE_LISTEN_HOST in up.sh)"
                ) from error
            await stack._wait_ready()
            await stack._check_core_reachable()
            await stack._forward_operator_metrics()
            try:
                yield stack
            finally:
                await release_jobs({"KUBECONFIG": env.kubeconfig}, env.namespace)
                await forget_users({"KUBECONFIG": env.kubeconfig}, env.namespace)
        finally:
            await stack._stop_forwarding()
            if not stack.keep_logs:
                shutil.rmtree(workdir, ignore_errors=True)
