"""The link's refill policy: run while the pools have room, but not a block for a few keys."""

from __future__ import annotations

import asyncio

from keysource.qkd import LinkParams, run_pair_link
from keysource.qkd.protocol import BlockReport
from keysource.qkd.refill import RefillGate

FAST = dict(frame_bits=32768, p_signal=0.6, p_decoy=0.3, min_sample_bits=1024, seed=11)


def report(keys: int, *, aborted: bool = False, refilled_bits: int = 0) -> BlockReport:
    return BlockReport(
        block=1, aborted=aborted, reason="test" if aborted else None, qber=0.01,
        sifted_bits=0, secret_bits=0 if aborted else keys * 256 + refilled_bits, keys=keys,
        pulses=0, duration_s=0.0, auth_bits_used=0, auth_bits_refilled=refilled_bits,
    )


def test_runs_until_full_then_waits_for_a_blocks_room() -> None:
    gate = RefillGate()
    assert gate.ready(1000)  # empty pools: fill them
    gate.on_report(report(150, refilled_bits=4096))
    assert gate.block_keys == 150  # the authentication refill is not pool keys
    assert gate.ready(20)  # still filling up: even a little room is used
    assert not gate.ready(0)  # full
    assert not gate.ready(3)  # a few keys taken: not worth a block
    assert not gate.ready(149)
    assert gate.ready(150)  # a block's yield fits again
    assert gate.ready(10)  # and it keeps going until the pools are full again


def test_small_pools_wait_for_half_their_room_at_most() -> None:
    gate = RefillGate()
    assert gate.ready(40)  # a pool smaller than one block's yield
    gate.on_report(report(150))
    assert not gate.ready(0)
    assert not gate.ready(19)
    assert gate.ready(20)


def test_aborted_blocks_do_not_change_the_estimate_and_unknown_capacity_refills() -> None:
    gate = RefillGate()
    assert not gate.ready(0)  # started full (a restart): nothing known about the capacity
    gate.on_report(report(0, aborted=True))
    assert gate.block_keys == 0
    assert gate.ready(1)  # so the old rule holds: any room starts a block


async def test_pair_link_leaves_a_full_pool_alone_until_a_block_fits() -> None:
    pool: list = []
    taken = {"n": 0}
    capacity = 60
    reports: list[BlockReport] = []
    stop = asyncio.Event()

    def room() -> int:
        return capacity - (len(pool) - taken["n"])

    task = asyncio.create_task(run_pair_link(
        LinkParams(**FAST), on_keys_a=pool.extend, on_keys_b=lambda batch: None,
        on_report=reports.append, stop=stop, room=room))
    try:
        async with asyncio.timeout(60):
            while room() > 0:
                await asyncio.sleep(0.05)
        blocks = len(reports)
        yield_keys = max(r.keys for r in reports if not r.aborted)
        assert yield_keys > 2
        taken["n"] += 2  # a client takes two keys out of the full pool
        await asyncio.sleep(1.5)  # several blocks' time
        assert len(reports) == blocks, "a block ran for two keys of room"
        taken["n"] += capacity // 2  # room for half the pool: worth a block again
        async with asyncio.timeout(60):
            while len(reports) == blocks:
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
