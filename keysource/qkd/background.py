"""Where the link's number crunching runs: one worker thread at low CPU priority.

An emulated link computes every pulse of every block (numpy), which keeps a core busy for as
long as the pools have room. Real QKD hardware does that work on its own electronics; here it
shares the host with the KME's API, the relay and the messengers, so it yields to them: its
thread runs at nice +10 (Linux sets priorities per thread) and, where the kernel groups
processes by session for scheduling (autogroup, the default on most Linux systems, which
makes a thread's nice count only inside its own session), the process's group does too.
Keys simply arrive a little later when the machine is busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
LINK_NICENESS = 10

_executor: ThreadPoolExecutor | None = None
AUTOGROUP = Path("/proc/self/autogroup")


def _lower_priority() -> None:
    # Not every platform lets a thread lower its own priority (or has per-thread nice);
    # running at normal priority is then the correct fallback, not an error.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, 0, LINK_NICENESS)


def _lower_group_priority() -> None:
    """Raise this process's autogroup nice to LINK_NICENESS (never lower it)."""
    with contextlib.suppress(OSError, ValueError, IndexError):  # no autogroup here: fine
        current = int(AUTOGROUP.read_text().split("nice", 1)[1])
        if current < LINK_NICENESS:
            AUTOGROUP.write_text(str(LINK_NICENESS))


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _lower_group_priority()
        _executor = ThreadPoolExecutor(1, thread_name_prefix="qkd-link",
                                       initializer=_lower_priority)
    return _executor


async def in_background(call: Callable[..., T], *args: object) -> T:
    """Run ``call(*args)`` on the low-priority link thread."""
    return await asyncio.get_running_loop().run_in_executor(_pool(), call, *args)
