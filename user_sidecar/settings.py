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

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import SettingsConfigDict

from ucim.common.drives import KINDS, check_root_pattern
from ucim.common.settings import ComponentSettings
from ucim.common.slurm import SlurmConfig

DEFAULT_DRIVE_ROOTS = {"home": "~"}


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
    # Drive locator kind -> local root pattern; {name} is the locator's user or group, "~" the instance
    # user's home. A drive's locator comes with every request (ucim.common.drives); "home:<u>" is served
    # only to <u>'s own instance. A site with project folders adds e.g. "project": "/work/projects/{name}"
    # (what is given is merged over the default, so adding "project" keeps "home").
    drive_roots: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_DRIVE_ROOTS))
    # Core's applications: the catalogue lives in Core, which sends each job's application. The site says
    # what an application's load instructions mean here: a folder of YAML files, each
    # {name, configurations: [{versions, load, unload, readme, srun}]} (the anchor's format), read by the
    # bridge at start (the instances cannot read it). None: no application is configured here.
    applications_dir: Path | None = None
    # What {- systemLoad -} and {- systemUnload -} print into every script that asks for them.
    system_load: str = ""
    system_unload: str = ""
    # srun() in a template: the command and its flags (an application's configuration may override them).
    srun_command: str = "srun"
    srun_flags: list[str] = Field(default_factory=list)
    # Lmod's spider JSON (`spider -o spider-json $MODULEPATH`): the modules users may pick for applications
    # this site has no load instructions for. None: no module picker.
    modules_file: Path | None = None
    # Offer users a choice among their own Slurm accounts (jobs/requestDynamicParameters). Only without Core's
    # accounting: with it, a job always runs under its workspace's account.
    account_picker: bool = False
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
    # The bridge's audit socket (ucim.user_sidecar.audit): every action is recorded there; None records nothing.
    # The bridge sets it from its own audit settings.
    audit_socket: Path | None = None
    # How long in-flight requests may finish when the instance is asked to stop.
    shutdown_timeout_seconds: float = Field(default=5.0, ge=0)

    # Transfers (ucim.user_sidecar.transfers). Sessions live in this folder below the user's home (made 0700);
    # each name is a plain one, and none may be "." or "..".
    transfer_folder: str = Field(
        default=".ucim/transfers", pattern=r"^\.?[A-Za-z0-9_-][A-Za-z0-9_.-]*(/\.?[A-Za-z0-9_-][A-Za-z0-9_.-]*)*$"
    )
    # An upload lives this long after its last chunk (CHUNKED asks for at least 30 min) ...
    upload_idle_seconds: float = Field(default=30 * 60, gt=0)
    # ... and never longer than this after it began (CHUNKED: at most 48 h).
    upload_max_age_seconds: float = Field(default=48 * 3600, gt=0)
    # The largest file one upload may hold (1 TiB).
    upload_max_bytes: int = Field(default=1 << 40, ge=0)
    # A chunk whose body sends nothing for this long is cut off; what arrived is kept.
    upload_body_idle_seconds: float = Field(default=60.0, gt=0)
    # A download token is used once, and within this time.
    download_lifetime_seconds: float = Field(default=15 * 60, gt=0)
    # How often expired sessions (and the data of abandoned uploads) are removed; also at start-up.
    transfer_sweep_interval_seconds: float = Field(default=5 * 60, gt=0)

    @field_validator("drive_roots")
    @classmethod
    def _known_kinds_and_valid_patterns(cls, roots: dict[str, str]) -> dict[str, str]:
        for kind, pattern in roots.items():
            if kind not in KINDS:
                raise ValueError(f"{kind!r} is not a drive kind; use {' or '.join(KINDS)}")
            check_root_pattern(pattern)
        return {**DEFAULT_DRIVE_ROOTS, **roots}

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
