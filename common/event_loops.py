"""The event loop of the processes that relay requests: uvloop's.

The gateway and the bridge pass every request on to the next hop, so the loop's own cost is
paid twice per call on the files path; on uvloop (libuv, in Cython) a browse through both
relays took about 0.2 ms less than on asyncio's loop (of ~2.7 ms they add on a 2-core VM). The user
instances keep asyncio's loop: aiohttp serves downloads with ``loop.sendfile``, which uvloop
does not implement, and would fall back to copying through Python.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def new_relay_loop() -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop()


def run_relay(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the relays' loop."""
    with asyncio.Runner(loop_factory=new_relay_loop) as runner:
        return runner.run(main)
