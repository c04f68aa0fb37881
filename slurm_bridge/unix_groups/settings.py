"""How the bridge makes projects into Unix groups: the policy and its knobs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, Field, field_validator, model_validator

from ucim.slurm_bridge.unix_groups.names import DEFAULT_PATTERN, pattern_problem

_MAX_GID = 2**32 - 2  # (gid_t)-1 means "no change" to chown and setgid


class GroupSettings(BaseModel):
    policy: Literal["local", "script"] = "local"
    # The group's name; {id8} is the first 8 hex digits of the project id. Also the script's suggestedGroupName.
    name_pattern: str = DEFAULT_PATTERN
    # The local policy's gids: groupadd picks the lowest free one in [gid_min, gid_max] (login.defs' range when unset).
    gid_min: int | None = Field(default=None, ge=1, le=_MAX_GID)
    gid_max: int | None = Field(default=None, ge=1, le=_MAX_GID)
    # getent, groupadd and gpasswd each get this long.
    command_timeout_seconds: float = Field(default=10.0, gt=0)
    # The site's onProjectUpdated script (policy "script"): absolute, owned by root, writable by root only.
    script: Path | None = None
    script_timeout_seconds: float = Field(default=60.0, gt=0)

    @field_validator("name_pattern")
    @classmethod
    def _a_pattern_that_names_groups(cls, pattern: str) -> str:
        if problem := pattern_problem(pattern):
            raise ValueError(problem)
        return pattern

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.gid_min is None) != (self.gid_max is None):
            raise ValueError("set both gid_min and gid_max, or neither")
        if self.gid_min is not None and self.gid_max is not None and self.gid_min > self.gid_max:
            raise ValueError(f"gid_min {self.gid_min} is above gid_max {self.gid_max}")
        if self.policy == "script" and self.script is None:
            raise ValueError("the group policy is 'script' but no script is configured")
        return self

    @property
    def gid_range(self) -> tuple[int, int] | None:
        if self.gid_min is None or self.gid_max is None:
            return None
        return self.gid_min, self.gid_max
