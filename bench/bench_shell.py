#!/usr/bin/env python3
"""Shell keystroke echo round trip: browser → gateway → bridge → the user's instance → PTY → and back.

Against the running local platform, every component a real process: a shell is opened as
Core opens it (``openTerminalInFolder``, and ``interactiveSession`` SHELL in a running job,
whose terminal is an ``srun --pty`` step), then single keystrokes are typed and the time
until the terminal's echo arrives on the socket is taken. Target: p50 ≤ 10 ms.

    python -m bench shell                 # 300 keystrokes per shell
    python -m bench shell --keys 1000 --json out.json
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from typing import Any

import aiohttp

from bench.report import bench_parser, in_own_namespace, run_bench, summary
from ucim.common.protocol import JobState
from ucim.testing.stack import Stack, running_stack

TARGET_P50_MS = 10.0


def frame(payload: dict[str, Any], stream: int) -> str:
    return json.dumps({"call": "jobs.compute.p.shell.open", "streamId": str(stream), "payload": payload})


async def drain(ws: aiohttp.ClientWebSocketResponse, quiet: float) -> None:
    """Read until nothing has come for ``quiet`` seconds."""
    while True:
        try:
            await ws.receive(timeout=quiet)
        except TimeoutError:
            return


async def echo_times(stack: Stack, opened: dict[str, Any], keys: int) -> list[float]:
    """Type ``keys`` keystrokes one at a time; the milliseconds from each to its echo."""
    url = stack.core.shell_url(opened, "alice")
    async with aiohttp.ClientSession() as session, session.ws_connect(url, protocols=("binary",)) as ws:
        token = opened["sessionIdentifier"]
        await ws.send_str(frame({"type": "initialize", "sessionIdentifier": token, "cols": 200, "rows": 50}, 0))
        await ws.receive_json(timeout=30)
        await drain(ws, 2.0)  # the login shell's prompt
        samples = []
        for i in range(keys):
            if i % 100 == 99:  # Ctrl-U: keep the line short
                await ws.send_str(frame({"type": "input", "data": "\x15"}, i + 1))
                await drain(ws, 0.1)
                continue
            started = time.perf_counter()
            await ws.send_str(frame({"type": "input", "data": "x"}, i + 1))
            while True:
                message = await ws.receive_json(timeout=10)
                if message["payload"].get("type") == "data" and "x" in message["payload"]["data"]:
                    break
            samples.append((time.perf_counter() - started) * 1000)
    return samples


def measure(keys: int) -> dict[str, Any]:
    return in_own_namespace("shell", lambda env, namespace: bench(env, namespace, keys))


async def bench(env: dict[str, str], namespace: str, keys: int) -> dict[str, Any]:
    result: dict[str, Any] = {"keys": keys, "cases": {}}
    async with running_stack(env, namespace) as stack:
        core = stack.core
        (await core.call_provider("POST", "integration/init", {"username": "alice"})).raise_for_status()
        folder = await core.open_terminal_in_folder("alice", f"/{core.home_of('alice').id}")
        folder.raise_for_status()
        result["cases"]["folder"] = summary(await echo_times(stack, folder.body["responses"][0], keys))
        job_id = str(uuid.uuid4().int % 10**9)
        spec = core.make_job(job_id, "alice", ("sleep-exit", "1"), {"seconds": 300})
        await core.create_jobs([spec])
        await core.wait_for_update(job_id, JobState.RUNNING, timeout=60)
        try:
            job = await core.open_shell(spec)
            job.raise_for_status()
            result["cases"]["job (srun --pty)"] = summary(await echo_times(stack, job.body["responses"][0], keys))
        finally:
            await core.terminate_jobs([spec])
    result["verdict"] = {
        name: {"measured": case["p50"], "limit": TARGET_P50_MS, "ok": case["p50"] <= TARGET_P50_MS}
        for name, case in result["cases"].items()
    }
    return result


def table(document: dict[str, Any]) -> str:
    lines = [f"shell keystroke echo, {document['keys']} keys per shell ({document['duration_s']} s)"]
    lines.append(f"  {'shell':20} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, case in document["cases"].items():
        lines.append(
            f"  {name:20} {case['p50']:>8} {case['p99']:>8} {case['max']:>8}"
            f"  {'ok' if document['verdict'][name]['ok'] else 'MISSED'} (p50 ≤ {TARGET_P50_MS} ms)"
        )
    return "\n".join(lines)


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--keys", type=int, default=300, help="keystrokes per shell (default 300)")
    opts = parser.parse_args()
    if not 10 <= opts.keys <= 100_000:
        parser.error("--keys must be between 10 and 100000")
    return run_bench("shell", opts, lambda: measure(opts.keys), table, needs_root=True)


if __name__ == "__main__":
    sys.exit(main())
