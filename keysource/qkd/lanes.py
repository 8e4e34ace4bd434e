"""A pair link's blocks spread over worker processes ("lanes"), one core each.

Why processes: a block's post-processing is numpy, but mostly hundreds of small calls per
Cascade round trip, each holding the GIL, so a second thread adds no core. A block depends on
nothing another lane does, so N lanes make N blocks at once.

Each lane is a complete :class:`~keysource.qkd.pair.PairLink` (both ends, its own
authentication secret, its own block numbers) in a process of its own, started with
``spawn`` (the KME runs an event loop and threads: forking it is not safe). Lane 0 uses the
link's seed, lane i > 0 a seed derived from it, so ``--seed`` still fixes every public random
choice and every key. The coordinator (:func:`run_lanes`) hands a block to each lane and takes
the results back in the order it handed them out, round robin, so keys reach both pools in the
same order on every run with the same seed, and both pools get the same keys.

Lane processes run at the link thread's low priority (background.LINK_NICENESS): the KME's
API, its pool's database thread and the event loop come first.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import numpy as np

from .background import LINK_NICENESS
from .pair import UNLIMITED, BlockResult, PairLink, deliver_block
from .params import LinkParams
from .protocol import BlockReport, KeyBatch
from .refill import RefillGate

MAX_LANES = 64

_link: PairLink | None = None  # the lane's link, in a lane process


def lane_params(params: LinkParams, lane: int) -> LinkParams:
    """Lane ``lane``'s parameters: the link's, with a seed of its own (lane 0 keeps the seed,
    so one lane is the link as it runs without lanes)."""
    if lane == 0 or params.seed is None:
        return params
    seed = int(np.random.SeedSequence([params.seed, lane]).generate_state(1, np.uint64)[0])
    return dataclasses.replace(params, seed=seed >> 1)  # a non-negative int64


def _start_lane(params: LinkParams) -> None:
    global _link
    # Ctrl+C in a terminal reaches the whole process group: the KME stops its lanes itself
    # (Lane.close), after the blocks they are on, so no lane dies mid-block with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(AttributeError, OSError):  # no per-process nice: run as is
        os.nice(LINK_NICENESS)
    _link = PairLink(params)


def _run_block(room: int) -> BlockResult:
    assert _link is not None, "lane process not started"
    return _link.run_block(room)


class Lane:
    """One worker process holding one PairLink; runs one block at a time."""

    def __init__(self, params: LinkParams, lane: int) -> None:
        self.index = lane
        self._pool = ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_lane, initargs=(lane_params(params, lane),))

    def run_block(self, room: int) -> Future[BlockResult]:
        return self._pool.submit(_run_block, room)

    def close(self) -> None:
        """Stop the process once its current block is done; blocks not started are dropped."""
        self._pool.shutdown(wait=False, cancel_futures=True)


async def run_lanes(
    params: LinkParams, lanes: int, *, on_keys_a: Callable[[KeyBatch], Any],
    on_keys_b: Callable[[KeyBatch], Any], on_report: Callable[[BlockReport], Any],
    stop: asyncio.Event, room: Callable[[], int] | None = None,
) -> None:
    """:func:`~keysource.qkd.pair.run_pair_link` with ``lanes`` blocks at once: the same
    callbacks, called with each block's keys and report in the order the blocks were handed
    out (lane 0, 1, ..., 0, 1, ...).

    Room: each block handed out may fill up to its share of the pools' free room (the room
    divided among the lanes); the refill gate (refill.py) holds new blocks back as with one
    lane. Once ``stop`` is set no block is handed out, and those running are awaited and
    delivered, so no key made is lost at one end only.
    """
    if not 1 <= lanes <= MAX_LANES:
        raise ValueError(f"lanes must be in [1, {MAX_LANES}]")
    workers = [Lane(params, lane) for lane in range(lanes)]
    idle: deque[Lane] = deque(workers)
    running: deque[tuple[Lane, asyncio.Future[BlockResult]]] = deque()
    gate = RefillGate()
    try:
        while running or not stop.is_set():
            while idle and not stop.is_set():
                free = UNLIMITED if room is None else int(room())
                if not gate.ready(free):
                    break
                lane = idle.popleft()
                share = free if free >= UNLIMITED else max(1, free // lanes)
                running.append((lane, asyncio.wrap_future(lane.run_block(share))))
            if not running:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.2)
                continue
            lane, result = running[0]
            block = await result
            running.popleft()
            idle.append(lane)
            gate.on_report(block.report)
            await deliver_block(block, on_keys_a, on_keys_b, on_report)
    finally:
        for _, result in running:
            result.cancel()
        for lane in workers:
            lane.close()
