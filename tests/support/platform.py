"""Access to the real local platform (hack/local_platform.py) from tests.

A test session reuses a platform that is already up; otherwise it starts one
and stops it again at the end (unless UCIM_KEEP_PLATFORM=1).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ucim.testing.platform_daemons import PlatformDaemons
from ucim.testing.stack import read_platform_env

REPO = Path(__file__).resolve().parents[2]
PLATFORM_SCRIPT = REPO / "hack" / "local_platform.py"


@dataclass(frozen=True)
class Platform:
    env: dict[str, str]

    @property
    def kubeconfig(self) -> str:
        return self.env["KUBECONFIG"]

    @property
    def kubectl_path(self) -> str:
        return str(Path(self.env["UCIM_BIN_DIR"]) / "kubectl")

    @property
    def daemons(self) -> PlatformDaemons:
        """SIGKILL and start its daemons (slurmctld, kube-apiserver, ...) from an async test: ``kill``, ``start``."""
        return PlatformDaemons(PLATFORM_SCRIPT)

    def process_env(self) -> dict[str, str]:
        """The environment for a child process that talks to this platform."""
        return {**os.environ, **self.env}

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the platform's kubectl as the admin."""
        cmd = [self.kubectl_path, "--kubeconfig", self.kubeconfig, *args]
        return _run(cmd, stdin, check, self.process_env())

    def patch(
        self, namespace: str, resource: str, body: object, *, status: bool = False, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """A JSON merge patch of one object, optionally through its status subresource."""
        args = ["patch", "-n", namespace, *resource.split("/"), "--type=merge", "-p", json.dumps(body)]
        return self.kubectl(*args, *(["--subresource=status"] if status else []), check=check)

    def get(self, namespace: str, resource: str) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(self.kubectl("get", "-n", namespace, resource, "-o", "json").stdout)
        return obj

    def run_as(
        self, user: str, *cmd: str, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command as a local user, the way a login would (runuser keeps SLURM_CONF)."""
        return _run(["runuser", "-u", user, "--", *cmd], stdin, check, self.process_env())


def _run(cmd: list[str], stdin: str | None, check: bool, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=env, timeout=120, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{shlex.join(cmd)} failed ({result.returncode}):\n{result.stderr}")
    return result


def _platform(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(PLATFORM_SCRIPT), *args], text=True, check=check)


def platform_session() -> Iterator[Platform]:
    """Yield the running platform, starting it first if it is down."""
    status = subprocess.run([sys.executable, str(PLATFORM_SCRIPT), "status"], capture_output=True, check=False)
    already_up = status.returncode == 0
    if not already_up:
        _platform("up")
    try:
        yield Platform(env=read_platform_env())
    finally:
        if not already_up and os.environ.get("UCIM_KEEP_PLATFORM") != "1":
            _platform("down", check=False)
