"""The kind scripts, run here against fake docker, kind, kubectl and helm (no Docker engine exists).

The fakes log every call and answer the few questions the scripts ask (the kind network's gateway,
the frontend's address, the bridge's token). What is checked is what a real run depends on: the
state up.sh leaves (Core's key pair and tokens, kind.env as ``ucim.testing.kind_stack`` reads it),
the release's ``core.url`` and keys, the published ports, and when e2e.sh brings the installation up.
openssl, bash and the coreutils are the real ones.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.chart.helm import REPO
from ucim.testing.core_standin import CoreKeys
from ucim.testing.kind_stack import KIND_ENV_VERSION, KindEnv, load_kind_env

KIND = REPO / "hack" / "kind"

FAKE_DOCKER = r"""#!/usr/bin/env bash
echo "docker $*" >>"$FAKE_LOG"
case $1 in
  network)
    case "$*" in
      *Gateway*)
        if [[ -n ${FAKE_NO_GATEWAY:-} ]]; then printf '\n\n'; else printf 'fc00:f853:ccd:e793::1\n172.18.0.1\n'; fi ;;
      *Subnet*) printf 'fc00:f853:ccd:e793::/64\n172.19.0.0/16\n' ;;
    esac ;;
  run) echo 4f2a9c0d ;;
  inspect)
    case "$*" in
      *State.Running*) echo "${FAKE_FRONTEND_RUNNING:-true}" ;;
      *IPAddress*) echo 172.18.0.3 ;;
    esac ;;
esac
exit 0
"""

FAKE_KIND = r"""#!/usr/bin/env bash
echo "kind $*" >>"$FAKE_LOG"
case "$1 $2" in
  "get clusters") [[ -e $FAKE_DIR/cluster ]] && echo ucim ;;
  "create cluster") touch "$FAKE_DIR/cluster" ;;
  "get kubeconfig") echo "apiVersion: v1" ;;
esac
exit 0
"""

FAKE_KUBECTL = r"""#!/usr/bin/env bash
echo "kubectl $*" >>"$FAKE_LOG"
case "$*" in
  *--dry-run=client*) printf 'apiVersion: v1\nkind: Namespace\n' ;;
  "apply -f -") cat >/dev/null ;;
  *'ca\.crt'*) printf 'Q0E=' ;;
  *'.data.token'*) printf 'dG9rZW4=' ;;
esac
exit 0
"""

FAKE_HELM = r"""#!/usr/bin/env bash
echo "helm $*" >>"$FAKE_LOG"
exit 0
"""

# e2e.sh runs `python3 -m pytest ...`: logged with the environment the tests would see.
FAKE_PYTHON = r"""#!/usr/bin/env bash
if [[ $1 == -m && $2 == pytest ]]; then
  echo "pytest ${*:3}" >>"$FAKE_LOG"
  echo "pytest-env UCIM_KIND_DIR=$UCIM_KIND_DIR KUBECONFIG=$KUBECONFIG cwd=$PWD" >>"$FAKE_LOG"
  exit "${FAKE_PYTEST_STATUS:-0}"
fi
exec /usr/bin/python3 "$@"
"""


@dataclass
class Fakes:
    root: Path
    env: dict[str, str]

    @property
    def state(self) -> Path:
        return self.root / "cache" / "kind"

    @property
    def log(self) -> list[str]:
        path = Path(self.env["FAKE_LOG"])
        return path.read_text().splitlines() if path.exists() else []

    def calls(self, tool: str) -> list[str]:
        return [line for line in self.log if line.startswith(f"{tool} ")]

    def run(self, script: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(KIND / script), *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def up(self, **env: str) -> KindEnv:
        result = self.run("up.sh", **env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "ready in" in result.stdout
        return load_kind_env({"UCIM_KIND_DIR": str(self.state)})


def _helm_version() -> str:
    go_mod = (REPO / "hack" / "helm" / "go.mod").read_text()
    found = re.search(r"^require helm\.sh/helm/v3 (\S+)$", go_mod, flags=re.MULTILINE)
    assert found is not None
    return found.group(1)


def _executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def fakes(tmp_path: Path) -> Fakes:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    root = tmp_path / "home dir"  # a space on the way: every path must stay quoted
    bin_dir = root / "bin"
    for name, text in (
        ("docker", FAKE_DOCKER),
        ("kind", FAKE_KIND),
        ("kubectl", FAKE_KUBECTL),
        ("python3", FAKE_PYTHON),
    ):
        _executable(bin_dir / name, text)
    # hack/build-helm.sh prints the cached helm's path without building it.
    _executable(root / "cache" / "bin" / f"helm-{_helm_version()}" / "helm", FAKE_HELM)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(root),
        "UCIM_CACHE": str(root / "cache"),
        "FAKE_LOG": str(root / "calls.log"),
        "FAKE_DIR": str(root),
    }
    return Fakes(root, env)


def test_up_makes_the_state_the_tests_read(fakes: Fakes) -> None:
    kind = fakes.up()
    state = fakes.state
    assert kind.namespace == "ucim" and kind.release == "ucim" and kind.fullname == "ucim"
    assert kind.kubeconfig == str(state / "kubeconfig")
    assert kind.kubectl == fakes.env["PATH"].split(":")[0] + "/kubectl"
    assert kind.gateway_url == "http://127.0.0.1:18889"
    assert kind.bridge_metrics == "127.0.0.1:19102"
    assert kind.frontend_container == "ucim-frontend"
    # Core's stand-in listens on this machine at the kind network's IPv4 gateway, where the release points.
    assert kind.core_listen == ("172.18.0.1", 18080)
    assert kind.core_url == "http://172.18.0.1:18080"
    # The key pair: the private key loads as CoreKeys, core.pub is its public key as the chart takes it.
    keys = CoreKeys.from_pem(kind.core_private_key.read_bytes())
    assert (state / "core.pub").read_text() == keys.public_key_b64()
    for secret in (kind.core_refresh_token_file, state / "ingress-token"):
        token = secret.read_text()
        assert re.fullmatch(r"[0-9a-f]{64}", token), "no trailing newline: the chart's Secret takes the file as it is"
    # Keys and tokens are the caller's only.
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for name in ("core.key", "refresh-token", "ingress-token", "kind.env"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name


def test_up_installs_the_release_pointing_at_the_tests_core(fakes: Fakes) -> None:
    fakes.up()
    state = fakes.state
    [install] = [call for call in fakes.calls("helm") if call.startswith("helm upgrade --install ucim ")]
    assert "--set core.url=http://172.18.0.1:18080" in install
    assert f"--set-file core.publicKey={state}/core.pub" in install
    assert f"--set-file core.refreshToken={state}/refresh-token" in install
    assert f"--set-file ingressToken={state}/ingress-token" in install
    assert any(call.startswith("helm test ucim ") for call in fakes.calls("helm"))
    runs = [call for call in fakes.calls("docker") if call.startswith("docker run ")]
    assert len(runs) == 1, "only the frontend: Core's stand-in runs in the tests, not in a container"
    assert "--name ucim-frontend" in runs[0] and "-p 127.0.0.1:19102:9102" in runs[0]
    assert "docker rm -f ucim-core" in fakes.calls("docker"), "an earlier up.sh's Core container is removed"


def test_up_keeps_the_key_and_tokens_on_a_second_run(fakes: Fakes) -> None:
    first = fakes.up()
    kept = {name: (fakes.state / name).read_text() for name in ("core.key", "core.pub", "refresh-token")}
    second = fakes.up()
    assert {name: (fakes.state / name).read_text() for name in kept} == kept
    assert first == second


def test_up_takes_the_gateway_from_the_subnet_when_docker_leaves_it_out(fakes: Fakes) -> None:
    kind = fakes.up(FAKE_NO_GATEWAY="1")
    assert kind.core_url == "http://172.19.0.1:18080"
    assert kind.core_listen == ("172.19.0.1", 18080)


def test_up_takes_another_core_address(fakes: Fakes) -> None:
    kind = fakes.up(
        UCIM_KIND_CORE_HOST="host.docker.internal", UCIM_KIND_CORE_LISTEN_HOST="192.0.2.7", UCIM_KIND_CORE_PORT="28080"
    )
    assert kind.core_url == "http://host.docker.internal:28080"
    assert kind.core_listen == ("192.0.2.7", 28080)


def test_e2e_runs_the_suite_on_an_installation_that_is_up(fakes: Fakes) -> None:
    fakes.up()
    Path(fakes.env["FAKE_LOG"]).unlink()
    result = fakes.run("e2e.sh", "-k", "crash")
    assert result.returncode == 0, result.stdout + result.stderr
    assert fakes.calls("helm") == [], "up.sh did not run again"
    assert fakes.calls("pytest") == ["pytest e2e --platform=kind -k crash"]
    [env] = fakes.calls("pytest-env")
    assert f"UCIM_KIND_DIR={fakes.state} " in env
    assert f"KUBECONFIG={fakes.state}/kubeconfig " in env
    assert env.endswith(f"cwd={REPO}")


@pytest.mark.parametrize("missing", ["kind.env", "old kind.env", "cluster", "frontend"])
def test_e2e_brings_the_installation_up_first(fakes: Fakes, missing: str) -> None:
    fakes.up()
    env = {}
    if missing == "kind.env":
        (fakes.state / "kind.env").unlink()
    elif missing == "old kind.env":
        text = (fakes.state / "kind.env").read_text()
        old = text.replace(f"UCIM_KIND_ENV_VERSION={KIND_ENV_VERSION}", "UCIM_KIND_ENV_VERSION=1")
        assert old != text
        (fakes.state / "kind.env").write_text(old)
    elif missing == "cluster":
        (fakes.root / "cluster").unlink()
    else:
        env["FAKE_FRONTEND_RUNNING"] = "false"
    Path(fakes.env["FAKE_LOG"]).unlink()
    result = fakes.run("e2e.sh", **env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert any(call.startswith("helm upgrade --install ucim ") for call in fakes.calls("helm"))
    assert fakes.calls("pytest") == ["pytest e2e --platform=kind"]
    assert load_kind_env({"UCIM_KIND_DIR": str(fakes.state)}).namespace == "ucim"


def test_e2e_fails_with_the_suite_and_shows_the_components(fakes: Fakes) -> None:
    fakes.up()
    result = fakes.run("e2e.sh", FAKE_PYTEST_STATUS="3")
    assert result.returncode == 3
    assert "kubectl -n ucim logs deploy/ucim-operator --tail 100" in fakes.calls("kubectl")
    assert "docker logs --tail 100 ucim-frontend" in fakes.calls("docker")


def test_down_removes_kind_env(fakes: Fakes) -> None:
    fakes.up()
    result = fakes.run("down.sh")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (fakes.state / "kind.env").exists()
    assert (fakes.state / "core.key").exists(), "keys and tokens are kept without --purge"
    assert "kind delete cluster --name ucim" in fakes.calls("kind")


def test_kind_env_sources_in_bash(fakes: Fakes) -> None:
    """kind.env is also `set -a; source`d (e2e.sh, people): quoted paths come back whole."""
    kind = fakes.up()
    script = 'set -a; source "$1"; set +a; printf "%s\\n" "$UCIM_KIND_CORE_PRIVATE_KEY" "$KUBECONFIG"'
    result = subprocess.run(
        ["bash", "-c", script, "bash", str(fakes.state / "kind.env")],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ["PATH"]},
    )
    assert result.stdout.splitlines() == [str(kind.core_private_key), kind.kubeconfig]


def test_kind_scripts_pass_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install -y shellcheck)")
    scripts = sorted(str(path.relative_to(REPO)) for path in KIND.glob("*.sh"))
    result = subprocess.run(
        [shellcheck, "-x", *scripts], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
