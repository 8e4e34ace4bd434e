"""Both ends of a link in one process (the single-machine demo and the tests).

Frames go from one endpoint to the other through the same codec as over TCP, and through an
in-process eavesdropper when LinkParams asks for one. Each block runs in a worker thread so the
event loop (the KME's HTTP server, in the demo) stays responsive.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from .auth import make_psk
from .background import in_background
from .eve import EveKnowledge, attack_frame, tamper_classical_frame
from .params import LinkParams
from .protocol import (
    SIFT_REPLY,
    AliceEndpoint,
    BlockReport,
    BobEndpoint,
    KeyBatch,
    decode_quantum,
    encode_quantum,
)
from .refill import RefillGate

UNLIMITED = 1 << 62


async def call_maybe_async(callback: Callable[..., Any], *args: Any) -> None:
    """Call a sync or async callback."""
    result = callback(*args)
    if inspect.isawaitable(result):
        await result


@dataclasses.dataclass
class BlockResult:
    keys_a: list[KeyBatch]
    keys_b: list[KeyBatch]
    report: BlockReport
    bob_reports: list[BlockReport]


class PairLink:
    """Synchronous driver of an Alice/Bob pair (and an optional Eve) — one block per call."""

    def __init__(self, params: LinkParams, psk: bytes | None = None) -> None:
        psk = make_psk() if psk is None else psk
        self.params = params
        self.alice = AliceEndpoint(params, psk)
        self.bob = BobEndpoint(params, psk)
        seed = params.seed
        self.eve_rng = np.random.default_rng(None if seed is None else [seed, 2])
        self.tamper_hook: Callable[[bytes, int], bytes] | None = None

    def _tamper_due(self, block: int) -> bool:
        every = self.params.tamper_classical_every
        return every > 0 and block % every == every - 1

    def run_block(self, room: int = UNLIMITED) -> BlockResult:
        alice, bob = self.alice, self.bob
        bob.room = room
        knowledge = EveKnowledge.empty()
        keys_a: list[KeyBatch] = []
        keys_b: list[KeyBatch] = []
        reports_a: list[BlockReport] = []
        reports_b: list[BlockReport] = []
        out = alice.start_block(room)
        block = alice.next_block - 1
        tampered = False
        to_bob, to_alice = list(out.send), []
        attacking = self.params.intercept_fraction > 0 or self.params.pns
        while to_bob or to_alice:
            for frame in to_bob:
                if frame[:1] == b"Q" and attacking:
                    pulses, known = attack_frame(
                        decode_quantum(frame), self.params, self.eve_rng,
                        intercept_fraction=self.params.intercept_fraction, pns=self.params.pns)
                    knowledge = knowledge.merge(known)
                    frame = encode_quantum(pulses)
                elif (frame[:1] == b"C" and frame[2] == SIFT_REPLY and not tampered
                      and self._tamper_due(block)):
                    frame, tampered = tamper_classical_frame(frame), True
                if self.tamper_hook is not None:
                    frame = self.tamper_hook(frame, block)
                res = bob.receive(frame)
                to_alice += res.send
                keys_b += res.keys
                reports_b += res.reports
            to_bob = []
            for frame in to_alice:
                if self.tamper_hook is not None:
                    frame = self.tamper_hook(frame, block)
                res = alice.receive(frame)
                to_bob += res.send
                keys_a += res.keys
                reports_a += res.reports
            to_alice = []
        if not reports_a:
            raise RuntimeError("block ended without a report (protocol bug)")
        report = reports_a[-1]
        if knowledge.slot.size and not report.aborted:
            known = int(np.isin(alice.last_frame_slots, knowledge.slot).sum())
            report = dataclasses.replace(report, eve_known_frame_bits=known)
        return BlockResult(keys_a, keys_b, report, reports_b)


async def run_pair_link(
    params: LinkParams, *, on_keys_a: Callable[[KeyBatch], Any],
    on_keys_b: Callable[[KeyBatch], Any], on_report: Callable[[BlockReport], Any],
    stop: asyncio.Event, room: Callable[[], int] | None = None,
) -> None:
    """Run a link with both endpoints in this process until ``stop`` is set.

    Keys (identical, same order) go to ``on_keys_a`` and ``on_keys_b``; one report per block to
    ``on_report``. When ``room()`` returns 0 the link idles, and once full it waits for room
    for a block's yield (see refill.py). Raises AuthKeyExhausted when so
    many blocks were lost to an attack that the authentication key ran out. (lanes.py runs
    several blocks at once, in worker processes.)
    """
    link = PairLink(params)
    gate = RefillGate()
    while not stop.is_set():
        free = UNLIMITED if room is None else int(room())
        if not gate.ready(free):
            try:
                await asyncio.wait_for(stop.wait(), 0.2)
            except TimeoutError:
                pass
            continue
        result = await in_background(link.run_block, free)
        gate.on_report(result.report)
        await deliver_block(result, on_keys_a, on_keys_b, on_report)


async def deliver_block(result: BlockResult, on_keys_a: Callable[[KeyBatch], Any],
                        on_keys_b: Callable[[KeyBatch], Any],
                        on_report: Callable[[BlockReport], Any]) -> None:
    """A block's keys to both ends (A's batches, then B's), then its report."""
    for batch in result.keys_a:
        await call_maybe_async(on_keys_a, batch)
    for batch in result.keys_b:
        await call_maybe_async(on_keys_b, batch)
    await call_maybe_async(on_report, result.report)
