"""Alice's weak-coherent-pulse source, sampled only where it matters.

A block is ``n_slots`` pulse slots. Each slot gets an intensity class (signal mu, decoy nu,
vacuum) and a photon number n ~ Poisson(intensity). Bob's detector registers each photon
independently with probability eta_src (detector efficiency, times the fibre transmittance when
the fibre is emulated at the source). By Poisson thinning the number m of *registrable* photons
is Poisson(k * eta_src) and independent of the other n - m photons, so we only materialise the
slots with m >= 1 (the "frame entries"): their positions form a Bernoulli process over the slots
(geometric gaps), and nothing is spent on the ~99 % of pulses that could never click.

Alice keeps the class, basis and bit of every entry. For a slot without an entry that Bob reports
anyway (a dark count), its class, basis and bit are drawn lazily from the exact conditional
distribution "no registrable photon", which is statistically identical to having drawn them first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .params import LinkParams


@dataclass
class PulseFrame:
    """What travels on the quantum channel: the pulses that could make Bob's detector click.

    Arrays are aligned and sorted by ``slot``. ``photons`` is the photon number n of the pulse,
    ``capable`` the number m <= n of those photons Bob's detector would register, ``lossless``
    marks pulses an eavesdropper forwarded through her own lossless line (the fibre loss is then
    not applied at Bob's end). ``attenuated`` says the fibre loss is already folded in.
    """

    block: int
    n_slots: int
    attenuated: bool
    slot: np.ndarray  # int64
    basis: np.ndarray  # uint8: 0 = Z (rectilinear), 1 = X (diagonal)
    bit: np.ndarray  # uint8
    photons: np.ndarray  # uint16
    capable: np.ndarray  # uint16
    lossless: np.ndarray  # bool

    def __len__(self) -> int:
        return int(self.slot.size)

    def take(self, index: np.ndarray) -> PulseFrame:
        """A frame with only the entries selected by ``index`` (bool mask or indices)."""
        return PulseFrame(
            self.block, self.n_slots, self.attenuated, self.slot[index], self.basis[index],
            self.bit[index], self.photons[index], self.capable[index], self.lossless[index],
        )


@dataclass
class AliceRecord:
    """Alice's private record of a block: what she sent in the slots that matter."""

    n_slots: int
    slot: np.ndarray
    cls: np.ndarray  # uint8 intensity class
    basis: np.ndarray
    bit: np.ndarray
    photons: np.ndarray
    class_slots: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))
    # conditional class distribution of slots without a registrable photon
    empty_class_probs: np.ndarray = field(default_factory=lambda: np.ones(3) / 3)


def _geometric_positions(rng: np.random.Generator, p: float, n_slots: int) -> np.ndarray:
    """Sorted positions of a Bernoulli(p) process over range(n_slots), via geometric gaps."""
    if p <= 0.0 or n_slots <= 0:
        return np.zeros(0, np.int64)
    expected = n_slots * p
    draw = int(expected + 8.0 * math.sqrt(expected) + 64)
    positions = np.cumsum(rng.geometric(p, size=draw), dtype=np.int64) - 1
    while positions[-1] < n_slots:  # astronomically rare: extend
        more = np.cumsum(rng.geometric(p, size=draw), dtype=np.int64) + positions[-1]
        positions = np.concatenate([positions, more])
    return positions[: np.searchsorted(positions, n_slots)]


def _zero_truncated_poisson(rng: np.random.Generator, lam: float, size: int) -> np.ndarray:
    """``size`` samples of Poisson(lam) conditioned on >= 1 (inverse CDF, short support)."""
    if size == 0:
        return np.ones(0, np.uint16)
    pmf = [math.exp(-lam) * lam / -math.expm1(-lam)]  # P(m = 1 | m >= 1)
    while sum(pmf) < 1 - 1e-15 and len(pmf) < 60:
        pmf.append(pmf[-1] * lam / (len(pmf) + 1))
    cdf = np.cumsum(pmf)
    cdf[-1] = 1.0
    return (np.searchsorted(cdf, rng.random(size), side="right") + 1).astype(np.uint16)


def emit_block(
    params: LinkParams, block: int, rng: np.random.Generator, *, n_slots: int | None = None
) -> tuple[PulseFrame, AliceRecord]:
    """Emit one block of pulses: the quantum frame for Bob and Alice's private record."""
    n_slots = params.pulses_for_block() if n_slots is None else n_slots
    attenuated = not (params.fibre_at_receiver or params.pns)
    eta_src = params.eta if attenuated else params.detector_efficiency
    intensities = np.array(params.intensities)
    probs = np.array(params.class_probs)
    capable_prob = probs * -np.expm1(-intensities * eta_src)  # P(class k and m >= 1)
    p_entry = float(capable_prob.sum())

    slot = _geometric_positions(rng, p_entry, n_slots)
    count = slot.size
    cls = rng.choice(3, size=count, p=capable_prob / p_entry).astype(np.uint8)
    lam = intensities[cls]
    capable = np.ones(count, np.uint16)
    for klass in range(3):
        members = cls == klass
        if intensities[klass] > 0:
            capable[members] = _zero_truncated_poisson(rng, intensities[klass] * eta_src,
                                                       int(members.sum()))
    photons = capable + rng.poisson(lam * (1.0 - eta_src)).astype(np.uint16)
    basis = rng.integers(0, 2, count, dtype=np.uint8)
    bit = rng.integers(0, 2, count, dtype=np.uint8)

    empty = probs * np.exp(-intensities * eta_src)
    empty_probs = empty / empty.sum()
    per_class_entries = np.bincount(cls, minlength=3)
    per_class_empty = rng.multinomial(n_slots - count, empty_probs)
    record = AliceRecord(
        n_slots=n_slots, slot=slot, cls=cls, basis=basis, bit=bit, photons=photons,
        class_slots=(per_class_entries + per_class_empty).astype(np.int64),
        empty_class_probs=empty_probs,
    )
    frame = PulseFrame(
        block=block, n_slots=n_slots, attenuated=attenuated, slot=slot, basis=basis.copy(),
        bit=bit.copy(), photons=photons, capable=capable.copy(),
        lossless=np.zeros(count, bool),
    )
    return frame, record


def sorted_ranks(haystack: np.ndarray, needles: np.ndarray, stride: int = 1024) -> np.ndarray:
    """``np.searchsorted(haystack, needles)`` for a strictly increasing ``haystack``, fast when
    ``needles`` are sorted and mostly in it (Bob's clicks among Alice's pulses)."""
    return locate(haystack, needles, stride)[0]


def locate(haystack: np.ndarray, needles: np.ndarray, stride: int = 1024
           ) -> tuple[np.ndarray, np.ndarray]:
    """Ranks of ``needles`` in a strictly increasing ``haystack`` (as np.searchsorted) and
    whether each needle is in it.

    A needle found at index r of the haystack has rank r. One binary search per ``stride``
    needles gives the offset of each run; every needle is then checked against the haystack at
    its run's offset, and only those that do not match it (dark counts, and the needles after
    them in the same run) are searched.
    """
    count = needles.size
    if count == 0 or haystack.size == 0:
        return np.searchsorted(haystack, needles).astype(np.int64), np.zeros(count, bool)
    firsts = np.arange(0, count, stride)
    offsets = np.searchsorted(haystack, needles[firsts]) - firsts
    ranks = np.repeat(offsets, stride)[:count]
    ranks += np.arange(count)
    last = haystack.size - 1
    found = haystack[np.minimum(ranks, last)] == needles
    found &= ranks <= last
    missed = np.flatnonzero(~found)
    if missed.size:
        ranks[missed] = rank = np.searchsorted(haystack, needles[missed])
        found[missed] = haystack[np.minimum(rank, last)] == needles[missed]
    return ranks, found


def alice_view(
    record: AliceRecord, detected_slots: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Class, basis, bit and photon number Alice sent in each slot Bob reports.

    Slots without a frame entry (dark counts) get values drawn from the conditional
    distribution of an empty slot; their photon number is reported as 0 registrable photons.
    ``detected_slots`` must be sorted (Bob reports them in slot order).
    """
    n = detected_slots.size
    if record.slot.size:
        pos, known = locate(record.slot, detected_slots)
        dark = np.flatnonzero(~known)
        pos[dark] = 0  # any valid index: their values are drawn below
        cls, basis, bit = record.cls[pos], record.basis[pos], record.bit[pos]
        photons = record.photons[pos]
        photons[dark] = 0
    else:
        dark = np.arange(n)
        cls, basis, bit = (np.zeros(n, np.uint8) for _ in range(3))
        photons = np.zeros(n, np.uint16)
    if dark.size:
        cls[dark] = rng.choice(3, size=dark.size, p=record.empty_class_probs)
        basis[dark] = rng.integers(0, 2, dark.size, dtype=np.uint8)
        bit[dark] = rng.integers(0, 2, dark.size, dtype=np.uint8)
    return cls, basis, bit, photons
