"""The whole of ucim as local processes against the local platform, driven by Core's stand-in.

Used by the e2e tests and by ``make demo``: it starts the gateway, the operator and
the slurm_bridge (their real console scripts, with settings from the environment)
in one namespace, and plays UCloud/Core in-process with ``CoreStandIn``.

``Stack`` is also what ``ucim.testing.kind_stack`` yields for the Helm release in a kind
cluster, so the e2e tests read the same on both: the frontend (``Frontend``: where Slurm
runs and the users' files are) is this machine here and a container there, and
``Stack.kubectl`` talks to whichever apiserver holds the resources.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import aiohttp

from ucim.common.kube import Kube, NotFoundError
from ucim.common.resources import UCloudJob, UserConnection, UserInstance
from ucim.testing.core_standin import CoreStandIn

PROVIDER = "ucim"
CLUSTER = "local"
# The wildcard domain of jobs' web interfaces on the test platform (no DNS: clients map it to 127.0.0.1).
WEB_SUFFIX = ".apps.ucim.test"


def platform_run_dir() -> Path:
    """Where hack/local_platform.py keeps its state (``$UCIM_RUN_DIR``)."""
    return Path(os.environ.get("UCIM_RUN_DIR", "/var/tmp/ucim-platform"))  # noqa: S108 (the platform's default)


def read_platform_env(run_dir: Path | None = None) -> dict[str, str]:
    """The ``KEY=value`` lines the local platform writes to ``<run dir>/platform.env``."""
    env = {}
    for line in ((run_dir or platform_run_dir()) / "platform.env").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            env[key.strip()] = value.strip()
    return env


def project_drives_dir() -> Path:
    """Where the local platform keeps project drives: ``<this>/<group>`` (``drive_roots["project"]``)."""
    return platform_run_dir() / "projects"


def accounting_settings() -> dict[str, dict[str, str]]:
    """Core's accounting on, for ``running_stack``: the event stream, groups, Slurm accounts, project drives,
    storage accounted; usage measured every 2 s (compute and storage) so that tests need not wait."""
    roots = {"project": f"{project_drives_dir()}/{{name}}"}
    return {
        "ucim-gateway": {"UCIM_GATEWAY_ACCOUNTING_ENABLED": "true"},
        "ucim-operator": {
            "UCIM_OPERATOR_ACCOUNTING_ENABLED": "true",
            "UCIM_OPERATOR_CLUSTER": CLUSTER,
            "UCIM_OPERATOR_STORAGE_ACCOUNTED": "true",
        },
        "ucim-bridge": {
            "UCIM_BRIDGE_ACCOUNTING__ENABLED": "true",
            "UCIM_BRIDGE_ACCOUNTING__USAGE_INTERVAL_SECONDS": "2",
            "UCIM_BRIDGE_ACCOUNTING__STORAGE_INTERVAL_SECONDS": "2",
            "UCIM_BRIDGE_SIDECAR__DRIVE_ROOTS": json.dumps(roots),
        },
    }


# --- the platform's software (issue 16): load instructions and modules, for the sidecar's settings ---


@dataclass(frozen=True)
class PlatformSoftware:
    """Where the local platform keeps the site's software (``hack/local_platform.py up`` makes it)."""

    # Load instructions in the anchor's applications/ format (PROTOCOL-APPS §1): ucim-probe and python.
    applications_dir: Path
    # Lmod's spider JSON of the module tree (``spider -o jsonSoftwarePage``): the anchor's modulesFile (§9.3).
    modules_file: Path
    # The module tree (ucim-probe 1.0.0, 1.2.3, 2.0.0), a MODULEPATH entry; every login shell has it already,
    # through /etc/profile.d, so a job's `module load` needs no system load text.
    module_path: Path


def platform_software(platform_env: Mapping[str, str]) -> PlatformSoftware:
    """The local platform's load instructions, spider JSON and module tree, as its platform.env names them."""
    return PlatformSoftware(
        applications_dir=Path(platform_env["UCIM_APPLICATIONS_DIR"]),
        modules_file=Path(platform_env["UCIM_MODULES_FILE"]),
        module_path=Path(platform_env["UCIM_MODULES_DIR"]),
    )


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free port below the kernel's ephemeral range, never handed out twice by this process.

    A port from ``bind(0)`` is an ephemeral one: a client socket can take it before the component
    it is for binds it (seen once in CI: the gateway's EADDRINUSE). ``hack/local_platform.py``
    picks its ports the same way, on its own (it runs on the standard library alone).
    """
    low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    candidates = range(20000, low) if low > 21000 else range(high + 1, 65536)
    while True:
        port = secrets.choice(candidates)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port


class CommandError(AssertionError):
    """A command a test ran failed (an AssertionError, so pytest reports it as a failed check)."""


def run_command(
    cmd: Sequence[str],
    *,
    stdin: str | None = None,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` to completion, text in and out; with ``check``, raise ``CommandError`` on a non-zero exit."""
    result = subprocess.run(
        list(cmd),
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        env=None if env is None else dict(env),
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise CommandError(f"{shlex.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@dataclass(frozen=True)
class Frontend:
    """The HPC frontend: where Slurm runs, the users exist and their job folders are.

    Locally that is this machine (``container`` None: commands run here, with ``env``); on kind it is
    the Slurm frontend container, and every command goes through ``docker exec`` (as root, in the
    container's own environment). ``user`` runs a command as that user, the way a login would
    (``runuser`` keeps the environment, so SLURM_CONF holds).
    """

    container: str | None = None
    env: Mapping[str, str] | None = None

    def command(self, cmd: Sequence[str], *, user: str | None = None, stdin: bool = False) -> list[str]:
        """The command line that runs ``cmd`` on the frontend."""
        argv = ["runuser", "-u", user, "--", *cmd] if user is not None else list(cmd)
        if self.container is None:
            return argv
        return ["docker", "exec", *(["-i"] if stdin else []), self.container, *argv]

    def run(
        self, *cmd: str, user: str | None = None, stdin: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        argv = self.command(cmd, user=user, stdin=stdin is not None)
        env = None if self.container is not None else {**os.environ, **(self.env or {})}
        return run_command(argv, stdin=stdin, check=check, env=env, timeout=timeout)

    def read_file(self, path: str | PurePath) -> str:
        return self.run("cat", "--", str(path)).stdout

    def exists(self, path: str | PurePath) -> bool:
        return self.run("test", "-e", str(path), check=False).returncode == 0

    def owner_uid(self, path: str | PurePath) -> int:
        return int(self.run("stat", "-c", "%u", "--", str(path)).stdout)

    def group_and_mode(self, path: str | PurePath) -> tuple[str, int]:
        """The group that owns a path and its mode bits (setgid included)."""
        group, mode = self.run("stat", "-c", "%G %a", "--", str(path)).stdout.split()
        return group, int(mode, 8)


@dataclass(frozen=True)
class Kubectl:
    """kubectl against one cluster: ``binary`` with ``kubeconfig`` (None: $KUBECONFIG)."""

    binary: str = "kubectl"
    kubeconfig: str | None = None

    def argv(self, *args: str) -> list[str]:
        """The command line of ``kubectl args``."""
        return [self.binary, *(["--kubeconfig", self.kubeconfig] if self.kubeconfig else []), *args]

    def __call__(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return run_command(self.argv(*args), stdin=stdin, check=check, timeout=timeout)

    def json(self, *args: str) -> Any:
        """The parsed ``-o json`` output of ``args``."""
        return json.loads(self(*args, "-o", "json").stdout)


def platform_kubectl(platform_env: Mapping[str, str]) -> Kubectl:
    """The local platform's kubectl (the one it built, when $UCIM_BIN_DIR says where) and kubeconfig."""
    bin_dir = platform_env.get("UCIM_BIN_DIR")
    binary = str(Path(bin_dir) / "kubectl") if bin_dir else shutil.which("kubectl") or "kubectl"
    return Kubectl(binary, platform_env.get("KUBECONFIG"))


@dataclass
class Component:
    name: str
    process: asyncio.subprocess.Process
    log: Path
    health_url: str

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(text[-lines:])


@dataclass
class Stack:
    """A running ucim: gateway, operator and bridge processes plus Core's stand-in.

    ``frontend`` and ``kubectl`` reach the frontend and the apiserver; the methods below are what the
    e2e tests use, on the local platform as on kind (``ucim.testing.kind_stack.KindStack``).
    """

    core: CoreStandIn
    namespace: str
    gateway_url: str
    workdir: Path
    envs: dict[str, dict[str, str]] = field(default_factory=dict)
    components: dict[str, Component] = field(default_factory=dict)
    frontend: Frontend = field(default_factory=Frontend)
    kubectl: Kubectl = field(default_factory=Kubectl)
    # The components' logs (``workdir``) stay after the stack stops when this is set, or when its
    # body raised; otherwise they go with it.
    keep_logs: bool = False

    # --- the frontend: Slurm and the users' files ---

    def run_as(
        self, user: str, *cmd: str, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command on the frontend as a local user, the way a login would."""
        return self.frontend.run(*cmd, user=user, stdin=stdin, check=check)

    def read_file(self, path: str | PurePath) -> str:
        """A file on the frontend, read as root."""
        return self.frontend.read_file(path)

    def exists(self, path: str | PurePath) -> bool:
        """Whether a path exists on the frontend (as root sees it)."""
        return self.frontend.exists(path)

    def owner_uid(self, path: str | PurePath) -> int:
        """The uid that owns a path on the frontend."""
        return self.frontend.owner_uid(path)

    def audit_records(self) -> list[dict[str, Any]]:
        """The bridge's audit trail so far, one dict per line (read as root on the frontend)."""
        path = self.envs.get("ucim-bridge", {}).get("UCIM_BRIDGE_AUDIT__PATH", "/var/log/ucim/audit.log")
        text = self.read_file(path) if self.exists(path) else ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    # --- the resources ---

    def get(self, resource: str) -> dict[str, Any]:
        """One object of the stack's namespace, e.g. ``ucj/<name>``, as JSON."""
        obj: dict[str, Any] = self.kubectl.json("get", "--namespace", self.namespace, resource)
        return obj

    # --- the components ---

    def metrics_targets(self) -> dict[str, str]:
        """``host:port`` of each component's /metrics, as this machine reaches it (for Prometheus)."""
        return {name: f"127.0.0.1:{self.envs[name][key]}" for name, key in HEALTH_PORT_KEYS.items()}

    def logs(self) -> str:
        return "\n".join(f"--- {c.name} ({c.log})\n{c.tail()}" for c in self.components.values())

    async def kill(self, name: str) -> None:
        """Kill a component hard (SIGKILL), as a crash would."""
        component = self.components[name]
        component.process.kill()
        await component.process.wait()

    async def start(self, name: str) -> None:
        """(Re)start a component with the settings it was first started with."""
        component = self.components[name]
        self.components[name] = await _start(name, component.log, self.envs[name], component.health_url)


async def _start(command: str, log: Path, env: Mapping[str, str], health_url: str) -> Component:
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            command, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    component = Component(command, process, log, health_url)
    await _wait_healthy(component)
    return component


async def _wait_healthy(component: Component, timeout: float = 30) -> None:  # noqa: ASYNC109
    async with aiohttp.ClientSession() as session:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if component.process.returncode is not None:
                raise RuntimeError(f"{component.name} exited ({component.process.returncode}):\n{component.tail()}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(component.health_url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{component.name} did not become healthy in {timeout} s:\n{component.tail()}")


def audit_dir(socket_dir: Path) -> Path:
    """Where a stack's bridge keeps its audit socket and file: beside its socket folder (which is 0700)."""
    return socket_dir.with_name(socket_dir.name + "-audit")


def component_env(
    platform_env: Mapping[str, str], namespace: str, core: CoreStandIn, ingress_token: str, socket_dir: Path
) -> dict[str, dict[str, str]]:
    """Each component's environment: its settings, the platform's kubeconfig and Slurm."""
    base = {**os.environ, **platform_env, "UCIM_LOG_FORMAT": "json"}
    ports = {name: free_port() for name in ("gateway", "operator", "bridge", "ingress")}
    core_key = core.keys.public_key_b64()
    software = platform_software(platform_env)
    return {
        "ucim-gateway": {
            **base,
            "UCIM_GATEWAY_PORT": str(ports["gateway"]),
            "UCIM_GATEWAY_NAMESPACE": namespace,
            "UCIM_GATEWAY_CLUSTER": CLUSTER,
            "UCIM_GATEWAY_PROVIDER_ID": PROVIDER,
            "UCIM_GATEWAY_CORE_PUBLIC_KEY": core_key,
            "UCIM_GATEWAY_CORE_URL": core.url,
            "UCIM_GATEWAY_CORE_REFRESH_TOKEN": core.refresh_token,
            "UCIM_GATEWAY_INGRESS_TOKEN": ingress_token,
            "UCIM_GATEWAY_PUBLIC_URL": f"http://127.0.0.1:{ports['gateway']}",
            # Jobs' web interfaces at app-<job>-<rank>.apps.ucim.test:<port>; tests map the names to loopback.
            "UCIM_GATEWAY_WEB_SUFFIX": WEB_SUFFIX,
            "UCIM_GATEWAY_WEB_SESSION_KEY": secrets.token_urlsafe(32),
        },
        "ucim-operator": {
            **base,
            "UCIM_OPERATOR_METRICS_PORT": str(ports["operator"]),
            "UCIM_OPERATOR_NAMESPACE": namespace,
            "UCIM_OPERATOR_PROVIDER_ID": PROVIDER,
            "UCIM_OPERATOR_CORE_URL": core.url,
            "UCIM_OPERATOR_CORE_REFRESH_TOKEN": core.refresh_token,
            "UCIM_OPERATOR_INGRESS_TOKEN": ingress_token,
        },
        "ucim-bridge": {
            **base,
            "UCIM_BRIDGE_METRICS_PORT": str(ports["bridge"]),
            "UCIM_BRIDGE_NAMESPACE": namespace,
            "UCIM_BRIDGE_CLUSTER": CLUSTER,
            "UCIM_BRIDGE_INGRESS_PORT": str(ports["ingress"]),
            "UCIM_BRIDGE_INGRESS_TOKEN": ingress_token,
            "UCIM_BRIDGE_SOCKET_DIR": str(socket_dir),
            # The audit trail's socket and file, per stack (the instances reach the socket: its folder is 0755).
            "UCIM_BRIDGE_AUDIT__SOCKET_PATH": str(audit_dir(socket_dir) / "audit.sock"),
            "UCIM_BRIDGE_AUDIT__PATH": str(audit_dir(socket_dir) / "log" / "audit.log"),
            # The site's load instructions and module picker: the platform's (hack/local_platform.py).
            "UCIM_BRIDGE_SIDECAR__APPLICATIONS_DIR": str(software.applications_dir),
            "UCIM_BRIDGE_SIDECAR__MODULES_FILE": str(software.modules_file),
            **hook_env(platform_env),
        },
    }


def hook_env(platform_env: Mapping[str, str]) -> dict[str, str]:
    """The bridge listens where the platform's Slurm hook sends (hack/local_platform.py), as a site's does."""
    if "UCIM_SLURM_HOOK_PORT" not in platform_env:
        return {}  # a platform from before the hook
    return {
        "UCIM_BRIDGE_HOOK__ENABLED": "true",
        "UCIM_BRIDGE_HOOK__PORT": platform_env["UCIM_SLURM_HOOK_PORT"],
        "UCIM_BRIDGE_HOOK__MUNGE_SOCKET": platform_env["UCIM_MUNGE_SOCKET"],
    }


async def release_jobs(platform_env: Mapping[str, str], namespace: str, timeout: float = 30) -> None:  # noqa: ASYNC109
    """Delete the namespace's UCloudJobs while the operator still runs, so its finalizer lets them go.

    Otherwise deleting the namespace later would hang on finalizers nobody removes.
    """
    async with await Kube.connect(platform_env.get("KUBECONFIG")) as kube:
        for job in await kube.list(UCloudJob, namespace):
            await kube.delete(UCloudJob, namespace, job.metadata.name)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    if not await kube.list(UCloudJob, namespace):
                        break
                    await asyncio.sleep(0.2)


async def forget_users(platform_env: Mapping[str, str], namespace: str) -> None:
    """Delete the namespace's UserConnections and UserInstances, so the next test's Core meets new users.

    For a namespace that outlives one test (kind's release): a fresh Core stand-in knows no drive
    of a connection made for an earlier one.
    """
    async with await Kube.connect(platform_env.get("KUBECONFIG")) as kube:
        for kind in (UserInstance, UserConnection):
            for obj in await kube.list(kind, namespace):
                with contextlib.suppress(NotFoundError):
                    await kube.delete(kind, namespace, obj.metadata.name)


HEALTH_PORT_KEYS = {
    "ucim-gateway": "UCIM_GATEWAY_PORT",
    "ucim-operator": "UCIM_OPERATOR_METRICS_PORT",
    "ucim-bridge": "UCIM_BRIDGE_METRICS_PORT",
}


@contextlib.asynccontextmanager
async def running_stack(
    platform_env: Mapping[str, str], namespace: str, settings: Mapping[str, Mapping[str, str]] | None = None
) -> AsyncIterator[Stack]:
    """Start Core's stand-in and every component; stop them all afterwards.

    Their logs (``Stack.workdir``) are removed then, unless the body raised or set ``Stack.keep_logs``.

    ``settings`` adds to a component's environment, e.g. ``{"ucim-gateway": {"UCIM_GATEWAY_AUTO_CONNECT": "false"}}``.
    """
    workdir = Path(tempfile.mkdtemp(prefix="ucim-stack-"))
    socket_dir = Path("/run") / f"ucim-{namespace}"
    ingress_token = secrets.token_urlsafe(32)
    async with CoreStandIn(PROVIDER, secrets.token_urlsafe(16)) as core:
        await core.start()
        envs = component_env(platform_env, namespace, core, ingress_token, socket_dir)
        for command, extra in (settings or {}).items():
            envs[command].update(extra)
        gateway_url = f"http://127.0.0.1:{envs['ucim-gateway']['UCIM_GATEWAY_PORT']}"
        core.provider_url = gateway_url
        stack = Stack(
            core=core,
            namespace=namespace,
            gateway_url=gateway_url,
            workdir=workdir,
            envs=envs,
            frontend=Frontend(env=platform_env),
            kubectl=platform_kubectl(platform_env),
        )
        try:
            # The bridge first: the operator and the gateway need instances to become Ready.
            for command in ("ucim-bridge", "ucim-operator", "ucim-gateway"):
                env = envs[command]
                health = f"http://127.0.0.1:{env[HEALTH_PORT_KEYS[command]]}/healthz"
                stack.components[command] = await _start(command, workdir / f"{command}.log", env, health)
            yield stack
        except BaseException:
            stack.keep_logs = True
            raise
        finally:
            await release_jobs(platform_env, namespace)
            for component in reversed(list(stack.components.values())):
                if component.process.returncode is None:
                    component.process.terminate()
                    try:
                        async with asyncio.timeout(15):
                            await component.process.wait()
                    except TimeoutError:
                        component.process.kill()
                        await component.process.wait()
            shutil.rmtree(socket_dir, ignore_errors=True)
            if stack.keep_logs:
                with contextlib.suppress(OSError):
                    shutil.copy(audit_dir(socket_dir) / "log" / "audit.log", workdir / "audit.log")
            shutil.rmtree(audit_dir(socket_dir), ignore_errors=True)
            if not stack.keep_logs:
                shutil.rmtree(workdir, ignore_errors=True)
