"""The eavesdropper, acting on quantum frames (and, for tests and demos, classical messages).

Intercept-resend: Eve measures a chosen fraction of the pulses in a random basis and resends a
pulse with the same photon number prepared in her basis with her result. Where her basis differs
from Alice's, Bob's result is random even when his basis matches Alice's, so the intercepted part
of the sifted key carries 25 % errors (plus misalignment); full interception gives QBER ~ 25 %.
She learns Alice's bit on the intercepted pulses where her basis was right.

Photon-number splitting (PNS): Eve measures the photon number of each pulse without disturbing
the polarisation (a QND measurement), keeps one photon from every multi-photon pulse in a quantum
memory (measured once the bases are announced, so she learns those bits exactly), replaces the
lossy fibre with a lossless line, and blocks single-photon pulses with the probability that keeps
Bob's overall click rate at its expected value. No errors are introduced, so the QBER does not
change; only the decoy-state analysis can notice, because decoy pulses (mostly single photons)
now arrive far less often than signal pulses. PNS acts on pulses as they leave Alice, so it needs
frames with the fibre emulated at Bob's end (``attenuated`` false).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .params import LinkParams
from .source import PulseFrame


@dataclass
class EveKnowledge:
    """Slots whose bit Eve will know once Alice's bases are public (intercepted in the right basis
    or held as a split photon)."""

    slot: np.ndarray

    @classmethod
    def empty(cls) -> EveKnowledge:
        return cls(np.zeros(0, np.int64))

    def merge(self, other: EveKnowledge) -> EveKnowledge:
        return EveKnowledge(np.union1d(self.slot, other.slot))


def intercept_resend(
    frame: PulseFrame, fraction: float, rng: np.random.Generator
) -> tuple[PulseFrame, EveKnowledge]:
    """Measure-and-resend a random ``fraction`` of the pulses."""
    if fraction <= 0 or len(frame) == 0:
        return frame, EveKnowledge.empty()
    hit = rng.random(len(frame)) < fraction
    eve_basis = rng.integers(0, 2, len(frame), dtype=np.uint8)
    right = eve_basis == frame.basis
    eve_bit = np.where(right, frame.bit, rng.integers(0, 2, len(frame), dtype=np.uint8))
    out = frame.take(slice(None))
    out.basis = np.where(hit, eve_basis, frame.basis).astype(np.uint8)
    out.bit = np.where(hit, eve_bit, frame.bit).astype(np.uint8)
    return out, EveKnowledge(frame.slot[hit & right])


def photon_number_splitting(
    frame: PulseFrame, params: LinkParams, rng: np.random.Generator
) -> tuple[PulseFrame, EveKnowledge]:
    """Split one photon off every multi-photon pulse, forward losslessly, block singles.

    Raises ValueError on a frame whose fibre loss was applied at the source: those pulses have
    already been through the fibre, so there is nothing left to split before the loss.
    """
    if frame.attenuated:
        raise ValueError("PNS needs frames with the fibre emulated at Bob (fibre_at_receiver)")
    if len(frame) == 0:
        return frame, EveKnowledge.empty()
    t = params.transmittance
    capable = frame.capable.astype(np.float64)
    # clicks Bob expects from these pulses through the honest fibre
    target = float(np.sum(-np.expm1(capable * np.log1p(-min(t, 1 - 1e-16)))))

    multi = frame.photons >= 2
    # removing one of n photons removes a registrable one with probability m / n
    removed_capable = rng.random(len(frame)) * frame.photons < frame.capable
    new_capable = frame.capable.astype(np.int32) - (multi & removed_capable)
    multi_clicks = float(np.sum(multi & (new_capable >= 1)))
    singles = ~multi
    n_single = float(singles.sum())

    keep = np.ones(len(frame), bool)
    if multi_clicks >= target:  # even multi-photon pulses alone are too many: thin them too
        keep[singles] = False
        keep[multi] = rng.random(int(multi.sum())) < target / max(multi_clicks, 1.0)
    else:
        pass_single = min(1.0, (target - multi_clicks) / max(n_single, 1.0))
        keep[singles] = rng.random(int(n_single)) < pass_single
    keep &= new_capable >= 1

    out = frame.take(slice(None))
    out.capable = new_capable.astype(np.uint16)
    out.photons = np.where(multi, frame.photons - 1, frame.photons).astype(np.uint16)
    out.lossless = np.ones(len(frame), bool)
    out = out.take(keep)
    known = frame.slot[multi & keep]
    return out, EveKnowledge(known)


def attack_frame(
    frame: PulseFrame, params: LinkParams, rng: np.random.Generator, *,
    intercept_fraction: float, pns: bool,
) -> tuple[PulseFrame, EveKnowledge]:
    """Apply the configured attacks in the order a real Eve would (PNS at Alice's door first)."""
    knowledge = EveKnowledge.empty()
    if pns:
        frame, known = photon_number_splitting(frame, params, rng)
        knowledge = knowledge.merge(known)
    if intercept_fraction > 0:
        frame, known = intercept_resend(frame, intercept_fraction, rng)
        knowledge = knowledge.merge(known)
    return frame, knowledge


def tamper_classical_frame(frame: bytes) -> bytes:
    """Flip one bit in the body of a classical frame (what an active attacker would do)."""
    if len(frame) < 30:
        return frame
    position = len(frame) - 17 if frame[2] not in (5, 6) else len(frame) - 1  # before the tag
    return frame[:position] + bytes([frame[position] ^ 0x01]) + frame[position + 1:]
