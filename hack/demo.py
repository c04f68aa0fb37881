"""The demo behind `make demo`: a UCloud job for alice, end to end on the local platform.

`make demo` starts the local platform first. This script then starts ucim's
components as local processes (gateway, operator, slurm_bridge), plays
UCloud/Core with its stand-in, connects alice, starts a job for her, and shows
it go IN_QUEUE → RUNNING → SUCCESS in `kubectl get ucloudjobs` and in the updates
Core received; then Core browses the job's folder and downloads its output through
the gateway, as alice's own instance reads them.
"""

from __future__ import annotations

import asyncio
import sys
import time

from ucim.common.protocol import JobState
from ucim.testing.stack import platform_kubectl, read_platform_env, running_stack

NAMESPACE = "ucim-demo"


def say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def kubectl(env: dict[str, str], *args: str) -> str:
    return platform_kubectl(env)(*args).stdout


async def main() -> None:
    env = read_platform_env()
    # A fresh namespace each time, so the listing shows only this run's job.
    kubectl(env, "delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true", "--timeout=60s")
    kubectl(env, "create", "namespace", NAMESPACE)
    say("starting ucim-bridge, ucim-operator and ucim-gateway against the local platform")
    async with running_stack(env, NAMESPACE) as stack:
        core = stack.core
        await core.connect("alice")
        home = core.home_of("alice")
        say(f"alice connected; her home is drive {home.id} ({home.provider_generated_id}) at Core")
        job_id = str(int(time.time()))
        say(f"Core starts job {job_id} for alice: run-command 'sleep 3; echo hello from $(id -un) on $(hostname)'")
        started = time.monotonic()
        created = await core.create_jobs(
            [
                core.make_job(
                    job_id,
                    "alice",
                    ("run-command", "1"),
                    {"command": "sleep 3; echo hello from $(id -un) on $(hostname)"},
                )
            ]
        )
        say(f"the gateway answered with providerGeneratedId {created[0].id}")
        seen: set[JobState] = set()
        while JobState.SUCCESS not in seen and time.monotonic() - started < 90:
            for update in core.updates_for(job_id):
                if update.state is not None and update.state not in seen:
                    seen.add(update.state)
                    say(f"Core received {update.state} after {time.monotonic() - started:.1f} s ({update.status})")
                    print(kubectl(env, "get", "ucloudjobs", "-n", NAMESPACE), end="", flush=True)
            await asyncio.sleep(0.1)
        if JobState.SUCCESS not in seen:
            print(stack.logs())
            raise SystemExit("demo: the job did not finish in 90 s")
        folder = f"/{home.id}/ucloud-jobs/{job_id}"
        page = await core.files_browse("alice", folder)
        listing = ", ".join(f"{item.id.rsplit('/', 1)[1]} ({item.status.size_in_bytes} B)" for item in page.items)
        say(f"Core browses {folder} through the gateway: {listing}")
        download = await core.create_download("alice", f"{folder}/stdout.txt")
        output = (await core.download(download.endpoint)).body.decode()
        say(f"and downloads stdout.txt (one-time token): {output.strip()}")
        print(kubectl(env, "get", "userinstances", "-n", NAMESPACE), end="")
    say("done")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
