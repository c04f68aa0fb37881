"""``kind_stack`` end to end against fakes of the kind installation (there is no Docker engine here).

The fakes stand where kind and Docker would: ``kubectl`` answers with the release's Secret,
Deployment and pods (and its ``port-forward`` serves /healthz), ``docker exec`` runs the command on
this machine (so the frontend is this machine, and the probe of Core's stand-in is a real HTTP
request to it), and ``crictl stop`` restarts the "container" a moment later. The apiserver is the
local platform's (``kind_stack`` deletes the namespace's UCloudJobs there at the end). What this
checks is kind_stack's own sequence: the release check, Core listening where kind.env says, the
waits, the forwarded metrics, kill and start, the logs, and the clean-up.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.platform import Platform
from ucim.testing.core_standin import CoreKeys
from ucim.testing.kind_stack import KindEnv, KindSetupError, kind_stack
from ucim.testing.stack import free_port

FAKE_KUBECTL = textwrap.dedent(
    """\
    import json, os, sys, time
    from pathlib import Path
    here = Path(os.environ["FAKE_KIND_DIR"])
    args = sys.argv[1:]
    if args[:1] == ["--kubeconfig"]:
        args = args[2:]
    with (here / "calls.log").open("a") as log:
        log.write("kubectl " + " ".join(args) + "\\n")
    if args[:2] == ["get", "secret"]:
        print((here / "secret.json").read_text())
    elif args[:2] == ["get", "deployment"]:
        print((here / "deployment.json").read_text())
    elif args[:2] == ["get", "pods"]:
        component = args[args.index("-l") + 1].rpartition("=")[2]
        pods = json.loads((here / "pods.json").read_text())
        state = pods.get(component, {"restarts": 0, "ready_at": 0})
        ready = time.time() >= state["ready_at"]
        status = {
            "name": component, "containerID": "containerd://c0ffee" + component, "restartCount": state["restarts"],
            "ready": ready, "state": {"running": {}} if ready else {"waiting": {"reason": "ContainerCreating"}},
        }
        pod = {
            "metadata": {"name": "ucim-" + component + "-1", "uid": "uid-" + component},
            "spec": {"nodeName": "ucim-control-plane"},
            "status": {"conditions": [{"type": "Ready", "status": str(ready)}], "containerStatuses": [status]},
        }
        print(json.dumps({"items": [pod]}))
    elif args[:1] == ["logs"]:
        print("log of " + args[3])
    elif args[:1] == ["port-forward"]:
        local = args[-1].partition(":")[0]
        os.execv(sys.executable, [sys.executable, "-m", "http.server", local, "--bind", "127.0.0.1",
                                  "--directory", str(here / "www")])
    """
)

FAKE_DOCKER = textwrap.dedent(
    """\
    import json, os, subprocess, sys, time
    from pathlib import Path
    here = Path(os.environ["FAKE_KIND_DIR"])
    args = sys.argv[1:]
    with (here / "calls.log").open("a") as log:
        log.write("docker " + " ".join(args) + "\\n")
    if args[:1] == ["exec"]:
        args = [a for a in args[1:] if a != "-i"]
        target, command = args[0], args[1:]
        if command[:2] == ["crictl", "stop"]:
            pods = json.loads((here / "pods.json").read_text())
            component = command[-1].removeprefix("c0ffee")
            state = pods.get(component, {"restarts": 0, "ready_at": 0})
            pods[component] = {"restarts": state["restarts"] + 1, "ready_at": time.time() + 1.5}
            (here / "pods.json").write_text(json.dumps(pods))
            sys.exit(0)
        if any(":9102/readyz" in a for a in command):
            sys.exit(0)  # the bridge inside the frontend container
        sys.exit(subprocess.run(command, check=False).returncode)
    if args[:1] == ["logs"]:
        print("log of the frontend")
    """
)


def _script(path: Path, source: str) -> None:
    path.write_text(f"#!{sys.executable}\n{source}")
    path.chmod(0o755)


@pytest.fixture
def fake_kind(tmp_path: Path, platform: Platform, namespace: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[KindEnv]:
    here = tmp_path / "fake kind"
    (here / "bin").mkdir(parents=True)
    (here / "www").mkdir()
    (here / "www" / "healthz").write_text("ok")
    (here / "pods.json").write_text("{}")
    _script(here / "bin" / "kubectl", FAKE_KUBECTL)
    _script(here / "bin" / "docker", FAKE_DOCKER)
    monkeypatch.setenv("FAKE_KIND_DIR", str(here))
    monkeypatch.setenv("PATH", f"{here / 'bin'}:{platform.process_env()['PATH']}")

    keys = CoreKeys.generate()
    (here / "core.key").write_bytes(keys.private_key_pem())
    (here / "refresh-token").write_text("refresh-me")
    core_port = free_port()
    core_url = f"http://127.0.0.1:{core_port}"
    (here / "secret.json").write_text(json.dumps(_secret(keys.public_key_b64(), "refresh-me")))
    (here / "deployment.json").write_text(json.dumps(_deployment(core_url)))

    # The gateway's NodePort: something that answers /healthz.
    gateway_port = free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(gateway_port), "--bind", "127.0.0.1", "--directory", here / "www"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield KindEnv(
            kubeconfig=platform.kubeconfig,
            kubectl=str(here / "bin" / "kubectl"),
            cluster="ucim",
            namespace=namespace,
            release="ucim",
            gateway_url=f"http://127.0.0.1:{gateway_port}",
            bridge_metrics="127.0.0.1:19102",
            frontend_container="ucim-frontend",
            core_listen=("127.0.0.1", core_port),
            core_url=core_url,
            core_private_key=here / "core.key",
            core_refresh_token_file=here / "refresh-token",
        )
    finally:
        gateway.terminate()
        gateway.wait(timeout=10)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _secret(public_key: str, refresh_token: str) -> dict[str, object]:
    return {"data": {"core-public-key": _b64(public_key), "core-refresh-token": _b64(refresh_token)}}


def _deployment(core_url: str) -> dict[str, object]:
    env = [{"name": "UCIM_OPERATOR_CORE_URL", "value": core_url}]
    return {"spec": {"template": {"spec": {"containers": [{"name": "operator", "env": env}]}}}}


def _calls(env: KindEnv) -> list[str]:
    return (Path(env.core_private_key).parent / "calls.log").read_text().splitlines()


async def test_kind_stack_sequence(fake_kind: KindEnv, tmp_path: Path) -> None:
    async with kind_stack(fake_kind) as stack:
        assert stack.namespace == fake_kind.namespace
        assert stack.core.url == fake_kind.core_url  # listening where the release points
        assert stack.core.provider_url == fake_kind.gateway_url
        targets = stack.metrics_targets()
        assert targets["ucim-gateway"] == fake_kind.gateway_url.removeprefix("http://")
        assert targets["ucim-bridge"] == "127.0.0.1:19102"
        forwarded = targets["ucim-operator"]
        # The frontend is reached with docker exec (here: this machine).
        probe = tmp_path / "probe.txt"
        probe.write_text("x\n")
        assert stack.read_file(probe) == "x\n"
        assert stack.exists(probe) and not stack.exists(tmp_path / "nothing")
        assert stack.run_as("alice", "id", "-un").stdout == "alice\n"
        # A crash: SIGKILL through crictl on the pod's node, then back once the pod is Ready again.
        await stack.kill("ucim-operator")
        await stack.start("ucim-operator")
        assert stack.metrics_targets()["ucim-operator"] != forwarded, "the port-forward was started again"
        await stack.kill("ucim-gateway")
        await stack.start("ucim-gateway")
        logs = stack.logs()
        assert "log of deploy/ucim-operator" in logs and "log of the frontend" in logs
    calls = _calls(fake_kind)
    assert "docker exec ucim-control-plane crictl stop --timeout 0 c0ffeeoperator" in calls
    assert "docker exec ucim-control-plane crictl stop --timeout 0 c0ffeegateway" in calls
    core_probes = [c for c in calls if c.startswith("docker exec ucim-frontend python3 -c") and fake_kind.core_url in c]
    assert len(core_probes) == 1, "Core's stand-in answered the frontend's probe at once"
    assert sum("port-forward" in c for c in calls) == 2


async def test_kind_stack_refuses_a_release_that_does_not_match(fake_kind: KindEnv) -> None:
    here = Path(fake_kind.core_private_key).parent
    (here / "deployment.json").write_text(json.dumps(_deployment("http://10.0.0.1:8080")))
    with pytest.raises(KindSetupError, match=r"the operator calls Core at 'http://10.0.0.1:8080'.*make kind-up"):
        async with kind_stack(fake_kind):
            pass


async def test_kind_stack_says_when_the_kind_network_cannot_reach_core(fake_kind: KindEnv) -> None:
    # The release (and kind.env) say Core is at a port nothing listens on.
    elsewhere = f"http://127.0.0.1:{free_port()}"
    here = Path(fake_kind.core_private_key).parent
    (here / "deployment.json").write_text(json.dumps(_deployment(elsewhere)))
    moved = dataclasses.replace(fake_kind, core_url=elsewhere)
    with pytest.raises(KindSetupError, match="cannot reach Core's stand-in"):
        async with kind_stack(moved):
            pass
