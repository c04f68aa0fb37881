"""The tailer and the instance's follow endpoint, on a real temporary job folder."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from pytest_aiohttp import AiohttpClient

from ucim.common.instance_api import JOBS_FOLLOW_PATH, LogChunk
from ucim.user_sidecar.log_follow import follow_job
from ucim.user_sidecar.log_tail import LogTailer, OutputFile, output_file


def test_output_files_are_named_by_rank_and_stream() -> None:
    assert output_file("stdout.txt") == OutputFile("stdout.txt", 0, "stdout")
    assert output_file("stderr.txt") == OutputFile("stderr.txt", 0, "stderr")
    assert output_file("std-3.out") == OutputFile("std-3.out", 3, "stdout")
    assert output_file("std-12.err") == OutputFile("std-12.err", 12, "stderr")
    for other in ("job.sbatch", "stdout.txt~", "std-.out", "std-1.log", "xstdout.txt"):
        assert output_file(other) is None


async def _next(chunks: AsyncIterator[LogChunk | None], timeout: float = 2.0) -> LogChunk:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        async for chunk in chunks:
            if chunk is not None:
                return chunk
    raise AssertionError("the tailer ended")


async def test_read_all_reads_every_file_from_its_offset(tmp_path: Path) -> None:
    (tmp_path / "stdout.txt").write_text("one\ntwo\n")
    (tmp_path / "std-1.err").write_text("oops\n")
    (tmp_path / "job.sbatch").write_text("#!/bin/bash\n")
    chunks = [chunk async for chunk in LogTailer(tmp_path, {"stdout.txt": 4}).read_all()]
    assert [(c.file, c.rank, c.stream, c.text, c.end) for c in chunks] == [
        ("stdout.txt", 0, "stdout", "two\n", 8),
        ("std-1.err", 1, "stderr", "oops\n", 5),
    ]


async def test_follow_sees_lines_written_later_and_files_that_appear_later(tmp_path: Path) -> None:
    (tmp_path / "stdout.txt").write_text("first\n")
    # A long fallback: only inotify can wake the tailer in time.
    chunks = LogTailer(tmp_path, fallback_seconds=30).follow()
    try:
        assert (await _next(chunks)).text == "first\n"
        with (tmp_path / "stdout.txt").open("a") as out:
            out.write("second\n")
        assert (await _next(chunks)).text == "second\n"
        (tmp_path / "std-2.out").write_text("rank two\n")
        chunk = await _next(chunks)
        assert (chunk.rank, chunk.stream, chunk.text) == (2, "stdout", "rank two\n")
    finally:
        await chunks.aclose()


async def test_the_fallback_tick_reads_without_events(tmp_path: Path) -> None:
    tailer = LogTailer(tmp_path, fallback_seconds=0.05)
    chunks = tailer.follow()
    try:
        async with asyncio.timeout(1):
            assert await anext(chunks) is None  # a tick with nothing
        (tmp_path / "stderr.txt").write_text("late\n")
        assert (await _next(chunks)).text == "late\n"
    finally:
        await chunks.aclose()


async def test_reads_are_bounded_and_split_characters_are_kept_whole(tmp_path: Path) -> None:
    text = "é" * 10  # two bytes each: a 3-byte read splits one
    (tmp_path / "stdout.txt").write_text(text)
    chunks = [chunk async for chunk in LogTailer(tmp_path, chunk_bytes=3).read_all()]
    assert all(len(c.text.encode()) <= 3 + 3 for c in chunks)  # a read, and what the decoder held back
    assert "".join(c.text for c in chunks) == text
    assert chunks[-1].end == 20
    assert all(c.end % 2 == 0 for c in chunks)  # a later reader never starts inside a character


async def test_invalid_utf8_becomes_the_replacement_character(tmp_path: Path) -> None:
    (tmp_path / "stdout.txt").write_bytes(b"ok \xff\n")
    [chunk] = [chunk async for chunk in LogTailer(tmp_path).read_all()]
    assert chunk.text == "ok \ufffd\n"


def _app() -> web.Application:
    app = web.Application()
    app.router.add_post(JOBS_FOLLOW_PATH, follow_job)
    return app


async def test_the_endpoint_streams_ndjson_and_ends_without_follow(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    (tmp_path / "stdout.txt").write_text("hello\n")
    client = await aiohttp_client(_app())
    response = await client.post(JOBS_FOLLOW_PATH, json={"jobFolder": str(tmp_path), "follow": False})
    assert response.status == 200
    lines = [json.loads(line) for line in (await response.text()).splitlines() if line]
    assert lines == [{"file": "stdout.txt", "rank": 0, "stream": "stdout", "text": "hello\n", "end": 6}]


async def test_the_endpoint_follows_until_the_caller_hangs_up(tmp_path: Path, aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(_app())
    response = await client.post(JOBS_FOLLOW_PATH, json={"jobFolder": str(tmp_path)})
    (tmp_path / "stdout.txt").write_text("live\n")
    async with asyncio.timeout(2):
        line = await response.content.readline()
    assert json.loads(line)["text"] == "live\n"
    response.close()


async def test_the_endpoint_refuses_bad_folders_readably(tmp_path: Path, aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(_app())
    missing = await client.post(JOBS_FOLLOW_PATH, json={"jobFolder": str(tmp_path / "gone")})
    assert missing.status == 404 and "does not exist" in await missing.text()
    relative = await client.post(JOBS_FOLLOW_PATH, json={"jobFolder": "ucloud-jobs/1"})
    assert relative.status == 400
