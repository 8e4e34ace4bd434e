"""Where the link's number crunching runs: one worker thread at low CPU priority.

An emulated link computes every pulse of every block (numpy), which keeps a core busy for as
long as the pools have room. Real QKD hardware does that work on its own electronics; here it
shares the process with the KME's API, so its thread runs at nice +10 (Linux sets priorities
per thread): the API, the pool's database thread and the event loop always come first.

The process itself keeps its normal priority. Where the kernel groups processes by session
for scheduling (autogroup, the default on most Linux systems), lowering the session's nice
would slow the whole KME, API included, behind every other busy session: on a loaded
two-core machine that turned 10 ms key requests into seconds, SAEs timed out and messages
went without QKD. Keys arriving a little later when the machine is busy is fine; answering
late is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
LINK_NICENESS = 10

_executor: ThreadPoolExecutor | None = None


def _lower_priority() -> None:
    # Not every platform lets a thread lower its own priority (or has per-thread nice);
    # running at normal priority is then the correct fallback, not an error.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, 0, LINK_NICENESS)


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(1, thread_name_prefix="qkd-link",
                                       initializer=_lower_priority)
    return _executor


async def in_background(call: Callable[..., T], *args: object) -> T:
    """Run ``call(*args)`` on the low-priority link thread."""
    return await asyncio.get_running_loop().run_in_executor(_pool(), call, *args)
