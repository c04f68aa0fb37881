"""Following a job's output through Core's follow websocket, end to end (PROTOCOL-INTERACTIVE §1).

Core (the stand-in) dials the gateway's websocket; the gateway relays what the owner's instance
reads, as the owner, from the job folder on the frontend; the stream ends at the terminal state.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from ucim.common.protocol import JobState
from ucim.testing.core_follow import log_text
from ucim.testing.stack import Stack

pytestmark = pytest.mark.e2e

COUNTING = "for i in $(seq 1 20); do echo line $i; sleep 0.5; done; echo done >&2"


def job_id() -> str:
    return str(uuid.uuid4().int % 10**9)


async def frames_of(stack: Stack, job: str, user: str) -> list[dict[str, Any]]:
    return [frame async for frame in stack.core.follow_job(job, user)]


async def test_every_line_arrives_in_order_and_the_stream_ends_at_the_terminal_state(stack: Stack) -> None:
    job = job_id()
    await stack.core.create_jobs([stack.core.make_job(job, "alice", ("run-command", "1"), {"command": COUNTING})])
    frames = await frames_of(stack, job, "alice")
    assert frames[0] == {"ping": "pong"}
    assert frames[-1]["type"] == "response" and frames[-1]["status"] == 200
    assert log_text(frames) == "".join(f"line {i}\n" for i in range(1, 21))
    assert log_text(frames, stream="stderr") == "done\n"
    # The end came once the job was terminal, and Core heard of that.
    update = await stack.core.wait_for_update(job, JobState.SUCCESS, timeout=30)
    assert update.state == JobState.SUCCESS
    sessions = {frame["payload"]["streamId"] for frame in frames if frame.get("type") == "message"}
    assert len(sessions) == 1


async def test_a_finished_job_streams_its_whole_output_and_ends(stack: Stack) -> None:
    job = job_id()
    command = "echo one; echo two"
    await stack.core.create_jobs([stack.core.make_job(job, "alice", ("run-command", "1"), {"command": command})])
    await stack.core.wait_for_update(job, JobState.SUCCESS, timeout=60)
    frames = await frames_of(stack, job, "alice")
    assert log_text(frames) == "one\ntwo\n"
    assert frames[-1]["status"] == 200


async def test_bob_cannot_follow_alices_job_and_an_unknown_job_is_a_404(stack: Stack) -> None:
    job = job_id()
    spec = stack.core.make_job(job, "alice", ("run-command", "1"), {"command": "sleep 30"})
    await stack.core.create_jobs([spec])
    [refused] = await frames_of(stack, job, "bob")
    assert refused["type"] == "response" and refused["status"] == 403
    assert "belongs to another user" in refused["payload"]["why"]
    [unknown] = await frames_of(stack, job_id(), "alice")
    assert unknown["status"] == 404 and "no job" in unknown["payload"]["why"]
    await stack.core.terminate_jobs([spec])
