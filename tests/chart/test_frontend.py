"""What ships besides the chart: the frontend's systemd unit and example settings, the images,
and the kind scripts (which must skip cleanly where Docker is missing, as on these machines)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from pydantic import BaseModel

from tests.chart.helm import REPO
from ucim.slurm_bridge.settings import BridgeSettings
from ucim.user_sidecar.settings import SidecarSettings

FRONTEND = REPO / "deploy" / "frontend"
IMAGES = REPO / "images"
UNIT = FRONTEND / "ucim-bridge.service"


def _bridge_variables(text: str) -> list[str]:
    """UCIM_BRIDGE_* names set in a file, commented-out examples included."""
    return re.findall(r"^#?\s*(UCIM_BRIDGE_[A-Z0-9_]+)=", text, flags=re.MULTILINE) + re.findall(
        r"^Environment=(?:.* )?(UCIM_BRIDGE_[A-Z0-9_]+)=", text, flags=re.MULTILINE
    )


def _is_bridge_setting(name: str) -> bool:
    """A field of BridgeSettings, or of one of its nested settings (``AUDIT__PATH``, ``MAPPING__POLICY``)."""
    field, _, nested = name.removeprefix("UCIM_BRIDGE_").lower().partition("__")
    if field not in BridgeSettings.model_fields:
        return False
    # The instances' settings travel as a dict (the bridge passes them on); they are SidecarSettings' fields.
    kind = SidecarSettings if field == "sidecar" else BridgeSettings.model_fields[field].annotation
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return nested in kind.model_fields
    return not nested


@pytest.mark.parametrize("path", [FRONTEND / "bridge.env.example", UNIT], ids=lambda p: p.name)
def test_frontend_files_name_real_settings(path: Path) -> None:
    names = _bridge_variables(path.read_text())
    assert names
    assert [n for n in names if not _is_bridge_setting(n)] == []


def test_unit_keeps_secrets_out_of_the_environment_file() -> None:
    unit = UNIT.read_text()
    assert "LoadCredential=kubeconfig:/etc/ucim/kubeconfig" in unit
    assert "LoadCredential=ingress-token:/etc/ucim/ingress-token" in unit
    example = (FRONTEND / "bridge.env.example").read_text()
    assert "UCIM_BRIDGE_INGRESS_TOKEN=" not in example
    assert "UCIM_BRIDGE_KUBECONFIG=" not in example


def test_unit_verifies(tmp_path: Path) -> None:
    """systemd-analyze accepts the unit (with ExecStart pointed at a binary that exists here)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("ExecStart=/opt/ucim/bin/ucim-bridge", "ExecStart=/bin/true"))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize("name", ["operator", "gateway", "slurm-frontend"])
def test_image_is_multi_stage_and_clean(name: str) -> None:
    dockerfile = (IMAGES / f"{name}.Dockerfile").read_text()
    stages = re.split(r"^FROM ", dockerfile, flags=re.MULTILINE)[1:]
    assert len(stages) >= 2, "multi-stage: build, then a clean final stage"
    final = stages[-1]
    assert "COPY --from=build /opt/ucim /opt/ucim" in final
    assert not re.search(r"\b(gcc|build-essential|python3-dev|pip install)\b", final), "no build tools at the end"
    assert (IMAGES / f"{name}.Dockerfile.dockerignore").is_file()
    if name != "slurm-frontend":  # the frontend runs the bridge as root, as systemd does
        users = re.findall(r"^USER (\S+)$", final, flags=re.MULTILINE)
        assert users and re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", users[-1]), "a numeric non-root USER"
        assert users[-1].split(":")[0] == "10001", "the UID the chart's securityContext runs as"


@pytest.mark.parametrize("script", ["up.sh", "e2e.sh", "down.sh"])
def test_kind_scripts_skip_without_a_docker_engine(script: str, tmp_path: Path) -> None:
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(
        ["bash", str(REPO / "hack" / "kind" / script)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "skipped: no Docker engine" in result.stdout
