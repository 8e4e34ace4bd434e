"""The link's number crunching yields the CPU to everything else on the host."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from keysource.qkd.background import LINK_NICENESS, in_background


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
async def test_link_work_runs_at_low_priority_off_the_event_loop() -> None:
    loop_thread = threading.get_ident()

    def probe() -> tuple[int, int]:
        return threading.get_ident(), os.getpriority(os.PRIO_PROCESS, 0)

    worker, niceness = await in_background(probe)
    assert worker != loop_thread
    assert niceness >= LINK_NICENESS
    # ... and only that thread: the event loop keeps its normal priority.
    assert os.getpriority(os.PRIO_PROCESS, 0) < LINK_NICENESS
