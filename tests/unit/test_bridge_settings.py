"""The bridge's settings: nested variables, the endpoint, the ingress token, what the fork server gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from ucim.slurm_bridge.main import fork_server_config
from ucim.slurm_bridge.settings import BridgeSettings


def test_nested_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UCIM_BRIDGE_MAPPING__POLICY", "script")
    monkeypatch.setenv("UCIM_BRIDGE_MAPPING__SCRIPT", "/etc/ucim/map-user")
    monkeypatch.setenv("UCIM_BRIDGE_MAPPING__MIN_UID", "5000")
    monkeypatch.setenv("UCIM_BRIDGE_SIDECAR__JOBS_FOLDER", "jobs")
    monkeypatch.setenv("SLURM_CONF", "/etc/slurm/other.conf")
    settings = BridgeSettings()
    assert (settings.mapping.policy, settings.mapping.script, settings.mapping.min_uid) == (
        "script",
        Path("/etc/ucim/map-user"),
        5000,
    )
    assert settings.sidecar == {"jobs_folder": "jobs"}
    assert settings.slurm_conf == Path("/etc/slurm/other.conf")


def test_the_endpoint_is_the_public_url_plus_the_instance() -> None:
    assert BridgeSettings(ingress_port=8890).endpoint("ui-1") == "http://127.0.0.1:8890/instances/ui-1"
    public = BridgeSettings(ingress_public_url="https://hpc.example.org/ucim/")
    assert public.endpoint("ui-1") == "https://hpc.example.org/ucim/instances/ui-1"


def test_the_token_file_wins_and_short_tokens_are_refused(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-the-file-0123456789\n")
    settings = BridgeSettings(ingress_token="from-the-environment-0123", ingress_token_file=token_file)
    assert settings.read_ingress_token().get_secret_value() == "from-the-file-0123456789"
    with pytest.raises(ValueError, match="at least 16"):
        BridgeSettings(ingress_token="short").read_ingress_token()
    with pytest.raises(ValueError, match="no ingress token"):
        BridgeSettings().read_ingress_token()
    assert not BridgeSettings().ingress_configured


def test_the_fork_server_gets_no_secret() -> None:
    settings = BridgeSettings(
        ingress_token="a-very-secret-token-value",
        slurm_conf=Path("/etc/slurm/slurm.conf"),
        sidecar={"jobs_folder": "j"},
    )
    config = fork_server_config(settings)
    assert "a-very-secret-token-value" not in config.model_dump_json()
    assert config.app_factory == "ucim.user_sidecar.app:for_fork_server"
    assert config.app_options["slurm_conf"] == "/etc/slurm/slurm.conf"
    assert config.app_options["jobs_folder"] == "j"
    assert config.min_uid == 1000


def test_the_instances_are_told_the_audit_socket_unless_the_trail_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert fork_server_config(BridgeSettings()).app_options["audit_socket"] == "/run/ucim-audit.sock"
    monkeypatch.setenv("UCIM_BRIDGE_AUDIT__SOCKET_PATH", "/run/site/audit.sock")
    monkeypatch.setenv("UCIM_BRIDGE_AUDIT__MAX_BYTES", "0")
    settings = BridgeSettings()
    assert fork_server_config(settings).app_options["audit_socket"] == "/run/site/audit.sock"
    assert settings.audit.max_bytes == 0
    monkeypatch.setenv("UCIM_BRIDGE_AUDIT__ENABLED", "false")
    assert fork_server_config(BridgeSettings()).app_options["audit_socket"] is None
