"""The host names of jobs' web interfaces on the wildcard domain: ``<prefix><job id>-<rank>[-<target>]<suffix>``.

With prefix ``app-`` and suffix ``.my-provider.example.com``, rank 0 of job 4821 is served at
``app-4821-0.my-provider.example.com`` and its ``lab`` target at ``app-4821-0-lab.my-provider.example.com``
(PROTOCOL-INTERACTIVE §3.1). DNS sends ``*.my-provider.example.com`` to the gateway, whose wildcard
certificate covers it; the gateway reads the job, rank and target back from the Host header.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from typing import Final

# Job ids are Core's (decimal in practice); a name ucim can put in a DNS label and read back.
_JOB_ID: Final = r"[0-9A-Za-z]{1,40}"
_RANK: Final = r"[0-9]{1,6}"
_TARGET: Final = r"[a-z0-9](?:[a-z0-9-]{0,40}[a-z0-9])?"


def hostname_safe(text: str) -> str:
    """A target's name as a host name part, as IM2 makes it: ASCII, lower case, spaces to ``-``, ``[a-z0-9-]`` only."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    words = re.sub(r"\s+", "-", ascii_text.lower().strip())
    return re.sub(r"[^a-z0-9-]", "", words).rstrip("-")


@dataclass(frozen=True)
class WebHost:
    """What a web interface's host name says."""

    job_id: str
    rank: int
    target: str | None  # hostname_safe of the target's name

    @property
    def cookie_name(self) -> str:
        """The session cookie's name (IM2's: ``…-<job id>-<rank>-`` and ``-<target>`` when there is one)."""
        suffix = "" if self.target is None else f"-{self.target}"
        return f"ucloud-compute-session-{self.job_id}-{self.rank}-{suffix}"


class WebHosts:
    """Names web interfaces under ``prefix`` … ``suffix`` and reads names back."""

    def __init__(self, prefix: str, suffix: str) -> None:
        if not suffix.startswith(".") or len(suffix) < 3:
            raise ValueError(f"the web suffix {suffix!r} must start with '.' (e.g. .apps.example.com)")
        self.prefix = prefix.lower()
        self.suffix = suffix.lower()
        self._pattern = re.compile(
            rf"{re.escape(self.prefix)}(?P<job>{_JOB_ID})-(?P<rank>{_RANK})(?:-(?P<target>{_TARGET}))?"
            rf"{re.escape(self.suffix)}"
        )
        self.parse = functools.lru_cache(maxsize=4096)(self._parse)

    @property
    def mask(self) -> str:
        """The host mask aiohttp's ``add_domain`` matches the interfaces' requests with."""
        return f"{self.prefix}*{self.suffix}"

    def host(self, job_id: str, rank: int, target: str | None = None) -> str:
        part = "" if target is None else f"-{hostname_safe(target)}"
        return f"{self.prefix}{job_id}-{rank}{part}{self.suffix}"

    def _parse(self, host: str) -> WebHost | None:
        """The interface a Host header names (a port is ignored); None when it names none."""
        name = host.rpartition(":")[0] if host.count(":") == 1 else host
        found = self._pattern.fullmatch(name.lower().rstrip("."))
        if found is None:
            return None
        return WebHost(found["job"], int(found["rank"]), found["target"])
