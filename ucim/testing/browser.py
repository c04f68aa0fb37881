"""A headless browser for the tests: Debian's chromium loads a URL and hands back the DOM its scripts made.

What a user's browser does with a web session (PROTOCOL-INTERACTIVE §3.3): it follows the provider's redirect,
keeps the cookie it was given, loads the page and runs its scripts (websockets included). :func:`dump_dom`
runs one fresh ``chromium --headless`` (its own profile in a temporary folder, so no cookie outlives the call)
for one URL and returns ``--dump-dom``'s output once the page's scripts have settled.

A web session needs a wildcard host (``<prefix><job>-<rank><suffix>``): ``resolve`` maps host patterns to
addresses inside the browser alone (``--host-resolver-rules``), e.g. ``{"*.apps.test": "127.0.0.1"}``.
A run takes about 1 s warm (~5 s the first time after boot) on the development machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Mapping, Sequence
from typing import Final

from aiohttp.abc import AbstractResolver, ResolveResult

CHROMIUM: Final = "chromium"  # Debian's package and command (hack/install-deps.sh installs it)
# Virtual time the page's scripts get once loading is done: the browser stops waiting as soon as nothing is
# pending (a websocket's echo arrives in milliseconds), so this bounds only a page that keeps itself busy.
SCRIPT_BUDGET_MS: Final = 5000


class BrowserError(Exception):
    """chromium is missing, failed, or did not finish in time."""


def chromium_arguments(
    url: str,
    profile: str,
    *,
    resolve: Mapping[str, str] | None = None,
    ignore_certificate_errors: bool = False,
    script_budget_ms: int = SCRIPT_BUDGET_MS,
    extra: Sequence[str] = (),
) -> list[str]:
    """The command line of one run (for :func:`dump_dom`)."""
    arguments = [
        "--headless",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={script_budget_ms}",
    ]
    if os.geteuid() == 0:
        arguments.append("--no-sandbox")  # chromium refuses to run as root with its sandbox
    if resolve:
        rules = ", ".join(f"MAP {pattern} {address}" for pattern, address in resolve.items())
        arguments.append(f"--host-resolver-rules={rules}")
    if ignore_certificate_errors:
        arguments.append("--ignore-certificate-errors")
    return [*arguments, *extra, "--dump-dom", url]


async def dump_dom(
    url: str,
    *,
    resolve: Mapping[str, str] | None = None,
    ignore_certificate_errors: bool = False,
    script_budget_ms: int = SCRIPT_BUDGET_MS,
    extra: Sequence[str] = (),
    timeout: float = 60.0,  # noqa: ASYNC109 (the browser process is killed at it, with a clear error)
) -> str:
    """The DOM (serialized HTML) of ``url`` after redirects and scripts; BrowserError if chromium cannot give it.

    An HTTP error page is a DOM too (its text is in it): chromium fails only when it cannot load at all.
    """
    program = shutil.which(CHROMIUM)
    if program is None:
        raise BrowserError(f"{CHROMIUM} is not installed (the Debian package chromium; hack/install-deps.sh)")
    with tempfile.TemporaryDirectory(prefix="ucim-chromium-") as profile:
        arguments = chromium_arguments(
            url,
            profile,
            resolve=resolve,
            ignore_certificate_errors=ignore_certificate_errors,
            script_budget_ms=script_budget_ms,
            extra=extra,
        )
        process = await asyncio.create_subprocess_exec(
            program,
            *arguments,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its helper processes in one group, ended with it
        )
        try:
            async with asyncio.timeout(timeout):
                out, err = await process.communicate()
        except TimeoutError:
            _end(process)
            await process.wait()
            raise BrowserError(f"chromium did not load {url} within {timeout} s") from None
        finally:
            _end(process)
    if process.returncode != 0 or not out.strip():
        tail = "\n".join(err.decode(errors="replace").splitlines()[-5:])
        raise BrowserError(f"chromium could not load {url} (exit status {process.returncode}):\n{tail}")
    return out.decode(errors="replace")


def _end(process: asyncio.subprocess.Process) -> None:
    """Kill the process group this call started (chromium and its helpers), if any of it is still there."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


class LoopbackResolver(AbstractResolver):
    """aiohttp's resolver for a browser of the test platform: every name (the wildcard domain of jobs' web
    interfaces included) is 127.0.0.1, as a wildcard DNS record to the gateway would make it."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST}]  # fmt: skip

    async def close(self) -> None:
        return None
