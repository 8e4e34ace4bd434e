"""A free-space link end runs only while its satellite is in view: started in a pass, stopped
at its end, started again at the next (the shell keysource.kme.network_runtime uses)."""

from __future__ import annotations

import asyncio
import time

from keysource.kme.network_runtime import _run_in_passes
from keysource.network.topology import Passes

SLACK_S = 0.01  # asyncio's monotonic timers against the wall clock the passes follow


def test_the_link_runs_in_passes_only() -> None:
    passes = Passes(period_s=0.6, duration_s=0.3)
    runs: list[tuple[float, float]] = []
    stop = asyncio.Event()

    async def link_end(stop: asyncio.Event) -> None:  # stands for run_link_endpoint
        started = time.time()
        await stop.wait()
        runs.append((started, time.time()))

    async def main() -> None:
        outer = stop

        async def counting(stop: asyncio.Event) -> None:
            await link_end(stop)
            if len(runs) == 3:
                outer.set()

        await asyncio.wait_for(_run_in_passes(passes, counting, outer), timeout=30)

    asyncio.run(main())
    assert len(runs) == 3
    for started, ended in runs:
        start, end = passes.window(started - SLACK_S)
        assert start - SLACK_S <= started <= end + SLACK_S  # started during a pass ...
        assert ended >= end - SLACK_S  # ... and kept running to its end
    # Each run starts in a later pass than the one before (not in the gap between passes).
    # Measured from the pass the run before started in: on a loaded machine a run may end
    # late, after the next pass began, and the next run then rightly starts at once.
    for (before, _), (started, _) in zip(runs, runs[1:], strict=False):
        assert started >= passes.window(before - SLACK_S)[0] + passes.period_s - SLACK_S
