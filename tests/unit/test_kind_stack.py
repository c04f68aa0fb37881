"""The pure parts of the kind e2e stack: kind.env, the release check, pod states, frontend commands."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from ucim.testing.core_standin import CoreKeys
from ucim.testing.kind_stack import (
    KIND_ENV_VERSION,
    KindEnv,
    KindSetupError,
    back_after_crash,
    kind_env_path,
    load_kind_env,
    parse_env_file,
    release_mismatches,
    restarts,
    running_container_id,
    serving,
    split_host_port,
    url_host_port,
)
from ucim.testing.stack import Frontend, Kubectl

REPO = Path(__file__).resolve().parents[2]

KIND_ENV = {
    "UCIM_KIND_ENV_VERSION": KIND_ENV_VERSION,
    "KUBECONFIG": "/state/kubeconfig",
    "UCIM_KIND_KUBECTL": "/usr/bin/kubectl",
    "UCIM_KIND_CLUSTER": "ucim",
    "UCIM_KIND_NAMESPACE": "ucim",
    "UCIM_KIND_RELEASE": "ucim",
    "UCIM_KIND_GATEWAY_URL": "http://127.0.0.1:18889",
    "UCIM_KIND_BRIDGE_METRICS": "127.0.0.1:19102",
    "UCIM_KIND_FRONTEND_CONTAINER": "ucim-frontend",
    "UCIM_KIND_FRONTEND_IP": "172.18.0.3",
    "UCIM_KIND_CORE_LISTEN": "172.18.0.1:18080",
    "UCIM_KIND_CORE_URL": "http://172.18.0.1:18080",
    "UCIM_KIND_CORE_PRIVATE_KEY": "/state/core.key",
    "UCIM_KIND_CORE_REFRESH_TOKEN_FILE": "/state/refresh-token",
    "UCIM_KIND_INGRESS_TOKEN_FILE": "/state/ingress-token",
}


# --- kind.env -----------------------------------------------------------------------------------


def test_kind_env_path_follows_lib_sh() -> None:
    assert kind_env_path({"UCIM_KIND_ENV": "/x/kind.env", "UCIM_KIND_DIR": "/y"}) == Path("/x/kind.env")
    assert kind_env_path({"UCIM_KIND_DIR": "/y", "UCIM_CACHE": "/c"}) == Path("/y/kind.env")
    assert kind_env_path({"UCIM_KIND_DIR": "", "UCIM_CACHE": "/c"}) == Path("/c/kind/kind.env")
    assert kind_env_path({"UCIM_CACHE": "", "HOME": "/home/me"}) == Path("/home/me/.cache/ucim/kind/kind.env")


def test_the_versions_agree() -> None:
    lib = (REPO / "hack" / "kind" / "lib.sh").read_text()
    assert f"\nenv_version={KIND_ENV_VERSION}\n" in lib


def test_parse_env_file_reads_shell_quoting() -> None:
    text = "# a comment\n\nA=plain\nB=/home/x\\ y/core.key\nC='single quoted'\nD=\nnot a line\nE=a=b\n"
    assert parse_env_file(text) == {"A": "plain", "B": "/home/x y/core.key", "C": "single quoted", "D": "", "E": "a=b"}


def test_kind_env_from_values() -> None:
    env = KindEnv.from_values(KIND_ENV)
    assert env.core_listen == ("172.18.0.1", 18080)
    assert env.core_private_key == Path("/state/core.key")
    assert env.fullname == "ucim"
    assert KindEnv.from_values({**KIND_ENV, "UCIM_KIND_RELEASE": "site"}).fullname == "site-ucim"


def test_kind_env_from_an_older_up_sh_says_to_run_it_again() -> None:
    old = {k: v for k, v in KIND_ENV.items() if k != "UCIM_KIND_ENV_VERSION"}
    with pytest.raises(KindSetupError, match=r"older hack/kind/up.sh .*make kind-up"):
        KindEnv.from_values(old)


def test_kind_env_names_what_is_missing() -> None:
    with pytest.raises(KindSetupError, match="lacks UCIM_KIND_CORE_URL, UCIM_KIND_CORE_PRIVATE_KEY"):
        KindEnv.from_values({**KIND_ENV, "UCIM_KIND_CORE_URL": "", "UCIM_KIND_CORE_PRIVATE_KEY": ""})
    with pytest.raises(KindSetupError, match="UCIM_KIND_CORE_LISTEN"):
        KindEnv.from_values({**KIND_ENV, "UCIM_KIND_CORE_LISTEN": "172.18.0.1"})


def test_load_kind_env_without_a_file_says_how_to_bring_it_up(tmp_path: Path) -> None:
    with pytest.raises(KindSetupError, match=r"not up .*make kind-up"):
        load_kind_env({"UCIM_KIND_DIR": str(tmp_path)})
    (tmp_path / "kind.env").write_text("".join(f"{k}={v}\n" for k, v in KIND_ENV.items()))
    assert load_kind_env({"UCIM_KIND_DIR": str(tmp_path)}) == KindEnv.from_values(KIND_ENV)


def test_addresses() -> None:
    assert split_host_port("172.18.0.1:18080") == ("172.18.0.1", 18080)
    assert split_host_port("[fc00::1]:18080") == ("fc00::1", 18080)
    for bad in ("172.18.0.1", ":80", "host:port"):
        with pytest.raises(ValueError, match="not host:port"):
            split_host_port(bad)
    assert url_host_port("http://127.0.0.1:18889") == "127.0.0.1:18889"
    assert url_host_port("https://ucim.example.org/") == "ucim.example.org:443"


# --- the release check ----------------------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _release(public_key: str, refresh_token: str, core_url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    secret = {"data": {"core-public-key": _b64(public_key), "core-refresh-token": _b64(refresh_token)}}
    env = [{"name": "UCIM_OPERATOR_CORE_URL", "value": core_url}, {"name": "X", "valueFrom": {}}]
    operator = {"spec": {"template": {"spec": {"containers": [{"name": "operator", "env": env}]}}}}
    return secret, operator


def test_release_that_matches() -> None:
    keys = CoreKeys.generate()
    url = "http://172.18.0.1:18080"
    assert release_mismatches(*_release(keys.public_key_b64(), "tok", url), keys, "tok", url) == []
    # The chart also takes the key as PEM, and a trailing newline from a file.
    assert release_mismatches(*_release(keys.public_key_pem(), "tok", url), keys, "tok", url) == []
    assert release_mismatches(*_release(keys.public_key_b64() + "\n", "tok", url), keys, "tok", url) == []


def test_release_that_does_not_match() -> None:
    keys, other = CoreKeys.generate(), CoreKeys.generate()
    url = "http://172.18.0.1:18080"
    problems = release_mismatches(*_release(other.public_key_b64(), "old", "http://10.0.0.1:8080"), keys, "tok", url)
    assert problems == [
        "the release's Core public key is not the stand-in's",
        "the release's refresh token is not the stand-in's",
        "the operator calls Core at 'http://10.0.0.1:8080', the stand-in is at 'http://172.18.0.1:18080'",
    ]
    assert len(release_mismatches({}, {}, keys, "tok", url)) == 3


# --- pods -------------------------------------------------------------------------------------------


def _pod(uid: str, *, restarts: int = 0, ready: bool = True, running: bool = True, deleting: bool = False) -> Any:
    state = {"running": {"startedAt": "2026-01-01T00:00:00Z"}} if running else {"waiting": {"reason": "BackOff"}}
    metadata: dict[str, Any] = {"name": f"ucim-operator-{uid}", "uid": uid}
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": metadata,
        "spec": {"nodeName": "ucim-control-plane"},
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [
                {
                    "name": "operator",
                    "containerID": f"containerd://{uid}0123abcd",
                    "restartCount": restarts,
                    "ready": ready,
                    "state": state,
                }
            ],
        },
    }


def test_container_of_a_pod() -> None:
    assert running_container_id(_pod("a"), "operator") == "a0123abcd"
    assert restarts(_pod("a", restarts=2), "operator") == ("a", 2)
    with pytest.raises(RuntimeError, match="not running"):
        running_container_id(_pod("a", running=False), "operator")
    with pytest.raises(RuntimeError, match="not running"):
        running_container_id(_pod("a"), "gateway")


def test_serving() -> None:
    assert serving(_pod("a"), "operator")
    assert not serving(_pod("a", ready=False), "operator")
    assert not serving(_pod("a", running=False, ready=False), "operator")
    assert not serving(_pod("a", deleting=True), "operator")
    assert not serving(_pod("a"), "gateway")


def test_back_after_crash() -> None:
    killed = [restarts(_pod("a", restarts=1), "operator")]
    # The kubelet has not restarted it yet, or it runs again but is not ready yet.
    assert not back_after_crash([_pod("a", restarts=1, ready=False, running=False)], "operator", killed)
    assert not back_after_crash([_pod("a", restarts=1)], "operator", killed)  # a stale view: the old container
    assert not back_after_crash([_pod("a", restarts=2, ready=False)], "operator", killed)
    assert back_after_crash([_pod("a", restarts=2)], "operator", killed)
    # A replacement pod counts too, the old one going away does not.
    assert back_after_crash([_pod("a", restarts=1, deleting=True), _pod("b")], "operator", killed)
    assert not back_after_crash([_pod("a", restarts=1, deleting=True)], "operator", killed)
    # Nothing killed: any serving pod.
    assert back_after_crash([_pod("a")], "operator", [])


# --- commands ---------------------------------------------------------------------------------------


def test_frontend_commands() -> None:
    here = Frontend()
    assert here.command(["id", "-u"]) == ["id", "-u"]
    assert here.command(["id", "-u"], user="alice") == ["runuser", "-u", "alice", "--", "id", "-u"]
    there = Frontend(container="ucim-frontend")
    assert there.command(["cat", "--", "/x"]) == ["docker", "exec", "ucim-frontend", "cat", "--", "/x"]
    assert there.command(["squeue"], user="bob", stdin=True) == [
        *("docker", "exec", "-i", "ucim-frontend"),
        *("runuser", "-u", "bob", "--", "squeue"),
    ]


def test_frontend_runs_here(tmp_path: Path) -> None:
    here = Frontend(env={"UCIM_PROBE": "seen"})
    (tmp_path / "f").write_text("a\nb\n")
    assert here.read_file(tmp_path / "f") == "a\nb\n"
    assert here.exists(tmp_path / "f") and not here.exists(tmp_path / "g")
    assert here.owner_uid(tmp_path / "f") == (tmp_path / "f").stat().st_uid
    assert here.run("sh", "-c", "echo $UCIM_PROBE").stdout == "seen\n"
    assert here.run("cat", stdin="in").stdout == "in"
    assert here.run("false", check=False).returncode == 1
    with pytest.raises(AssertionError, match=r"false failed \(1\)"):
        here.run("false")


def test_kubectl_argv() -> None:
    assert Kubectl("/bin/kubectl", "/k").argv("get", "pods") == ["/bin/kubectl", "--kubeconfig", "/k", "get", "pods"]
    assert Kubectl().argv("version") == ["kubectl", "version"]
