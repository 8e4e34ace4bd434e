"""The relay's garbage-collection policy: no automatic full passes in the middle of
traffic, but full passes from the sweeper, so closed connections are still reclaimed."""

from __future__ import annotations

import gc
from pathlib import Path

from relay.server import GC_NO_AUTOMATIC_FULL, GC_YOUNG_THRESHOLD, tune_gc
from tests.relay.harness import Identity, start_relay
from tests.relay.test_relay_file_streams import connect, metric, register, wait_metric


def test_tune_gc_moves_full_passes_out_of_the_allocation_path() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        young, _, full = gc.get_threshold()
        assert young == GC_YOUNG_THRESHOLD and full == GC_NO_AUTOMATIC_FULL
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


async def test_sweeper_runs_full_passes_and_the_relay_keeps_serving(tmp_path: Path) -> None:
    relay = start_relay(tmp_path / "relay", "--gc-interval", "0.5")
    try:
        await register(relay, Identity("bob"))
        await wait_metric(relay, "qsecret_relay_gc_full_total", lambda v: v >= 2)
        client = await connect(relay, Identity("alice"))
        await client.close()
        assert metric(relay, "qsecret_relay_gc_full_total") >= 2
    finally:
        relay.stop()
