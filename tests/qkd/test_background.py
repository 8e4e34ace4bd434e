"""The link's number crunching yields the CPU to the KME around it, which keeps its priority."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from keysource.qkd.background import LINK_NICENESS, in_background

AUTOGROUP = Path("/proc/self/autogroup")


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


@pytest.mark.skipif(not AUTOGROUP.exists(), reason="no scheduler autogroup on this kernel")
def test_the_process_hosting_the_link_keeps_its_session_priority() -> None:
    """Run in a child in its own session (as the KME runs). With autogroup, a session's nice
    weighs the whole process against other sessions: at +10 the KME's API answered in
    seconds on a busy machine. Only the link's thread may yield."""
    code = (
        "import asyncio; from keysource.qkd.background import in_background;"
        "print(open('/proc/self/autogroup').read());"
        "asyncio.run(in_background(int, 0));"
        "print(open('/proc/self/autogroup').read())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, start_new_session=True, check=True).stdout
    before, after = (int(line.split("nice", 1)[1]) for line in out.splitlines() if line)
    assert after == before, out
