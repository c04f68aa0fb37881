"""Settings of the user_sidecar, loaded once from UCIM_SIDECAR_* variables.

Run by the slurm_bridge, the sidecar never reads its environment: the bridge's fork
server builds these settings (from the bridge's own ``UCIM_BRIDGE_SIDECAR__*``
variables) before it forks, and fills in the user's ``user`` and ``home`` per child.
Run alone (``ucim-sidecar``), they come from ``UCIM_SIDECAR_*`` and the user is the
calling process's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from ucim.common.settings import ComponentSettings
from ucim.common.slurm import SlurmConfig

# The catalogue shipped with ucim; a site replaces it with `catalogue_file`.
DEFAULT_CATALOGUE = Path(__file__).with_name("catalogue.yaml")


class SidecarSettings(ComponentSettings):
    model_config: ClassVar[SettingsConfigDict] = SettingsConfigDict(
        env_prefix="UCIM_SIDECAR_", env_nested_delimiter="__", extra="ignore"
    )

    metrics_port: int = 9103
    # When set, serve on this unix socket instead of TCP (standalone only; the bridge hands us a socket).
    socket_path: str | None = None

    # The local account the instance acts for; None is the calling process's own user.
    user: str | None = None
    # Its home directory; None is the account's home from the password database.
    home: Path | None = None
    # Job folders are <home>/<jobs_folder>/<UCloud job id>, as the anchor does.
    jobs_folder: str = Field(default="ucloud-jobs", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    # UCloud drive id -> local root; "~" is the user's home. Project drives are added here later.
    drives: dict[str, str] = Field(default_factory=lambda: {"home": "~"})
    # The application catalogue (YAML); the built-in one offers run-command and sleep-exit.
    catalogue_file: Path = DEFAULT_CATALOGUE
    # SLURM_CONF for the Slurm tools; read from SLURM_CONF too, so a login environment just works.
    slurm_conf: Path | None = Field(
        default=None, validation_alias=AliasChoices("UCIM_SIDECAR_SLURM_CONF", "SLURM_CONF", "slurm_conf")
    )
    # Where the Slurm tools are (None: on PATH) and how long they may take.
    slurm_bin_dir: Path | None = None
    slurm_timeout_seconds: float = Field(default=30.0, gt=0)
    # PATH of the Slurm tools and of the jobs they submit.
    path: str = "/usr/local/bin:/usr/bin:/bin"
    lang: str = "C.UTF-8"
    # How long in-flight requests may finish when the instance is asked to stop.
    shutdown_timeout_seconds: float = Field(default=5.0, ge=0)

    def slurm_config(self, user: str, home: Path) -> SlurmConfig:
        """How this instance runs sbatch and friends: as itself, with a small clean environment."""
        env = {"PATH": self.path, "HOME": str(home), "USER": user, "LOGNAME": user, "LANG": self.lang}
        return SlurmConfig(
            bin_dir=self.slurm_bin_dir,
            slurm_conf=self.slurm_conf,
            env=env,
            user=user,
            timeout_seconds=self.slurm_timeout_seconds,
        )
