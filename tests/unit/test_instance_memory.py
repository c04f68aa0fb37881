"""slurm_bridge.instance_memory: the instances' PSS, summed and the largest, measured off the loop."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from ucim.slurm_bridge.instance_memory import measure, measure_forever, pss_bytes


def fake_proc(tmp_path: Path, pss_kb: dict[int, int]) -> Path:
    for pid, kb in pss_kb.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "smaps_rollup").write_text(
            f"55d0-7ffd ---p 00000000 00:00 0  [rollup]\nRss: {kb * 2} kB\nPss: {kb} kB\nPss_Anon: 1 kB\n"
        )
    return tmp_path


def gauges() -> tuple[float | None, float | None]:
    return (
        REGISTRY.get_sample_value("ucim_instances_memory_bytes"),
        REGISTRY.get_sample_value("ucim_instance_memory_max_bytes"),
    )


def test_the_instances_are_summed_and_the_largest_kept(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {10: 3000, 11: 5000})
    assert measure([10, 11, 12], proc) == [3000 * 1024, 5000 * 1024]  # 12 is gone: not counted
    assert gauges() == (8000 * 1024, 5000 * 1024)
    assert measure([], proc) == []
    assert gauges() == (0, 0)


def test_a_real_process_has_a_pss() -> None:
    if not Path(f"/proc/{os.getpid()}/smaps_rollup").exists():
        pytest.skip("this kernel has no smaps_rollup")
    size = pss_bytes(os.getpid())
    assert size is not None and size > 1 << 20


async def test_measuring_goes_on_after_a_failure() -> None:
    calls = 0
    measured_twice = asyncio.Event()

    def pids() -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("the manager was busy")
        if calls == 3:  # the second measure is done: this is the third call
            measured_twice.set()  # pids() runs on the loop, the measuring in a thread
        return [os.getpid()]

    task = asyncio.create_task(measure_forever(pids, interval=0.01))
    await asyncio.wait_for(measured_twice.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # A measure already in its thread goes on after the cancel and may be between setting the two gauges
    # (the process's PSS moves a little from one measure to the next): wait until it has set both.
    for _ in range(200):
        together, largest = gauges()
        if together == largest:
            break
        await asyncio.sleep(0.01)
    assert together == largest and together is not None and together > 0
