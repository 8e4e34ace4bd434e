"""Bob's side of the quantum channel: the rest of the fibre, his optics and his detectors.

For each frame entry (a pulse carrying m >= 1 photons the detector would register) Bob applies
the fibre loss if it was not already folded in at the source (each registrable photon survives
with the transmittance t, unless an eavesdropper forwarded the pulse through a lossless line),
picks a random measurement basis, and reads the bit: the sent bit when the bases agree (flipped
with the misalignment probability e_d), a fair coin otherwise. Dark counts fire independently in
each slot with probability Y0 and give a random bit; when a dark count and a photon coincide the
double click is squashed to a random bit half of the time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .params import LinkParams
from .source import PulseFrame, _geometric_positions


@dataclass
class Detections:
    """Bob's record of a block: slots where a detector clicked, his basis and his bit."""

    n_slots: int
    slot: np.ndarray  # int64, sorted, unique
    basis: np.ndarray  # uint8
    bit: np.ndarray  # uint8


def detect(params: LinkParams, frame: PulseFrame, rng: np.random.Generator) -> Detections:
    """Measure a quantum frame with Bob's detector."""
    survive = np.ones(len(frame), bool)
    if not frame.attenuated:
        t = params.transmittance
        lossy = ~frame.lossless
        # at least one of the m registrable photons survives the fibre
        log_loss = np.log1p(-min(t, 1 - 1e-16))
        p_survive = -np.expm1(frame.capable[lossy].astype(np.float64) * log_loss)
        survive[lossy] = rng.random(int(lossy.sum())) < p_survive
    hits = frame.take(survive)

    basis = rng.integers(0, 2, len(hits), dtype=np.uint8)
    same = basis == hits.basis
    flip = rng.random(len(hits)) < params.misalignment
    coin = rng.integers(0, 2, len(hits), dtype=np.uint8)
    bit = np.where(same, hits.bit ^ flip.astype(np.uint8), coin)

    dark_slots = _geometric_positions(rng, params.dark_count_prob, frame.n_slots)
    # both lists are sorted; merge them (np.union1d's hashing is slow on large arrays)
    merged = np.concatenate([hits.slot, dark_slots])
    merged.sort(kind="stable")
    distinct = np.ones(merged.size, bool)
    distinct[1:] = merged[1:] != merged[:-1]
    slots = merged[distinct]
    out_basis = rng.integers(0, 2, slots.size, dtype=np.uint8)  # dark-only: own random basis
    out_bit = rng.integers(0, 2, slots.size, dtype=np.uint8)  # dark-only: random bit
    where_hit = np.searchsorted(slots, hits.slot)
    out_basis[where_hit] = basis
    out_bit[where_hit] = bit
    # a dark count in the same slot as a photon click: double click, squashed to a random bit
    if hits.slot.size and dark_slots.size:
        pos = np.minimum(np.searchsorted(hits.slot, dark_slots), hits.slot.size - 1)
        both = dark_slots[hits.slot[pos] == dark_slots]
    else:
        both = dark_slots[:0]
    if both.size:
        where_both = np.searchsorted(slots, both)
        squash = rng.random(both.size) < 0.5
        out_bit[where_both[squash]] = rng.integers(0, 2, int(squash.sum()), dtype=np.uint8)
    return Detections(n_slots=frame.n_slots, slot=slots, basis=out_basis, bit=out_bit)
