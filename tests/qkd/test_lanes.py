"""Several blocks at once in worker processes (keysource/qkd/lanes.py)."""

from __future__ import annotations

import asyncio
import multiprocessing

import pytest

from keysource.qkd import LinkParams, run_lanes
from keysource.qkd.lanes import MAX_LANES, lane_params
from keysource.qkd.pair import PairLink
from keysource.qkd.protocol import BlockReport, KeyBatch

FAST = dict(frame_bits=32768, p_signal=0.6, p_decoy=0.3, min_sample_bits=1024, seed=7)


async def _run(params: LinkParams, lanes: int, blocks: int
               ) -> tuple[list[KeyBatch], list[KeyBatch], list[BlockReport]]:
    keys_a: list[KeyBatch] = []
    keys_b: list[KeyBatch] = []
    reports: list[BlockReport] = []
    stop = asyncio.Event()

    def on_report(report: BlockReport) -> None:
        reports.append(report)
        if len(reports) >= blocks:
            stop.set()

    async with asyncio.timeout(240):
        await run_lanes(params, lanes, on_keys_a=keys_a.append, on_keys_b=keys_b.append,
                        on_report=on_report, stop=stop)
    return keys_a, keys_b, reports


async def test_two_lanes_give_both_pools_the_same_keys_in_a_seeded_order() -> None:
    params = LinkParams(**FAST)
    keys_a, keys_b, reports = await _run(params, 2, 4)
    assert len(reports) >= 4 and not any(r.aborted for r in reports)
    assert keys_a == keys_b
    ids = [key_id for batch in keys_a for key_id, _ in batch]
    assert len(ids) == len(set(ids)) == sum(r.keys for r in reports)
    # blocks come back in the order they were handed out: lane 0, lane 1, lane 0, ...
    assert [r.block for r in reports[:4]] == [0, 0, 1, 1]
    # lane 0 is the link as it runs without lanes; lane 1 has a seed of its own
    alone = PairLink(params)
    assert keys_a[0] == alone.run_block().keys_a[0]
    other = PairLink(lane_params(params, 1))
    assert keys_a[1] == other.run_block().keys_a[0]
    assert lane_params(params, 1).seed != params.seed
    # and a second run with the same seed hands out the same keys in the same order
    again, _, _ = await _run(params, 2, 4)
    assert again[:4] == keys_a[:4]


async def test_stopping_ends_the_lane_processes() -> None:
    before = set(multiprocessing.active_children())  # other tests' children are not ours
    await _run(LinkParams(**FAST), 2, 2)
    for _ in range(100):  # each lane finishes the block it is on, then exits
        if not set(multiprocessing.active_children()) - before:
            break
        await asyncio.sleep(0.1)
    assert not set(multiprocessing.active_children()) - before


async def test_a_lane_count_out_of_range_is_refused() -> None:
    for lanes in (0, MAX_LANES + 1):
        with pytest.raises(ValueError, match="lanes must be in"):
            await _run(LinkParams(**FAST), lanes, 1)
