"""The QBER test positions are fixed only after Bob's detections (issue 15, build item 1).

The eavesdropper here is as strong as the old protocol let her be: she holds the quantum frame
until she has read START, and she can predict everything that is fixed when Bob measures,
including how the rest of the block will go (she runs copies of both endpoints, physics
generators and all, on the untouched frame). She then spares the pulses her copies chose as the
revealed sample and intercepts and resends all the others.

When START carried the sample seed, her copies chose the same sample as the real run, so the
sample showed the channel's 1 % while the key frame carried her 25 %: the estimate did not see
her. Now Alice draws the sample seed when she answers SIFT, after Bob's bits are fixed; the
copies draw a different one, and the estimate matches the key frame's true error rate within
sampling error.
"""

from __future__ import annotations

import copy
import math

import numpy as np

from keysource.qkd.auth import make_psk
from keysource.qkd.eve import intercept_resend
from keysource.qkd.params import SIGNAL, LinkParams
from keysource.qkd.protocol import (
    SIFT_REPLY,
    START,
    AliceEndpoint,
    BobEndpoint,
    decode_quantum,
    encode_quantum,
    plan_frame,
)

# Small blocks; no seed, so that public random choices come from the OS as in a real link (the
# copies share the physics generators' state, copied with the endpoints).
PARAMS = LinkParams(frame_bits=16384, p_signal=0.6, p_decoy=0.3, min_sample_bits=2048)


def _predicted_sample_slots(alice: AliceEndpoint, bob: BobEndpoint, quantum: bytes,
                            start: bytes) -> np.ndarray:
    """The slots of the revealed sample, as a copy of the block run on the untouched frame
    chooses them (from everything sent before Bob measures, and both ends' physics)."""
    shadow_alice, shadow_bob = copy.deepcopy(alice), copy.deepcopy(bob)
    shadow_bob.receive(quantum)
    for frame in shadow_bob.receive(start).send:
        shadow_alice.receive(frame)
    blk = shadow_alice.block
    assert blk is not None and blk.detections is not None
    sifted_signal = np.flatnonzero(shadow_alice._alice_sifted
                                   & (shadow_alice._alice_cls == SIGNAL))
    plan = plan_frame(PARAMS, sifted_signal, blk.order_seed)
    assert plan is not None
    return blk.detections.slot[plan[0]]


def _attack_all_but(quantum: bytes, spared: np.ndarray, rng: np.random.Generator) -> bytes:
    """Intercept-resend every pulse except those in the ``spared`` slots."""
    frame = decode_quantum(quantum)
    target = ~np.isin(frame.slot, spared)
    hit, _ = intercept_resend(frame.take(target), 1.0, rng)
    frame.basis[target] = hit.basis
    frame.bit[target] = hit.bit
    return encode_quantum(frame)


def _run_attacked_block(alice: AliceEndpoint, bob: BobEndpoint,
                        rng: np.random.Generator) -> tuple[float, float, int]:
    """One block under the attack: (estimated QBER, true QBER of the key frame, sample size)."""
    out = alice.start_block()
    quantum = next(f for f in out.send if f[:1] == b"Q")
    start = next(f for f in out.send if f[:1] == b"C" and f[2] == START)
    spared = _predicted_sample_slots(alice, bob, quantum, start)
    assert spared.size == PARAMS.sample_bits
    to_bob = [_attack_all_but(quantum, spared, rng), start]
    to_alice: list[bytes] = []
    alice_report = None
    true_qber: float | None = None
    while to_bob or to_alice:
        for frame in to_bob:
            blk = bob.block
            to_alice += bob.receive(frame).send
            if frame[:1] == b"C" and frame[2] == SIFT_REPLY:
                # Bob's raw key frame (before Cascade) against Alice's: the true error rate
                assert blk is not None and blk.frame_bits is not None
                theirs = alice.block.frame_bits  # type: ignore[union-attr]
                assert theirs is not None and theirs.size == blk.frame_bits.size
                true_qber = float(np.mean(theirs != blk.frame_bits))
        to_bob = []
        for frame in to_alice:
            res = alice.receive(frame)
            to_bob += res.send
            if res.reports:
                alice_report = res.reports[-1]
        to_alice = []
    assert alice_report is not None and true_qber is not None
    return alice_report.qber_sample, true_qber, PARAMS.sample_bits


def test_eve_who_spares_the_predicted_sample_is_seen_by_the_estimate() -> None:
    psk = make_psk()
    alice, bob = AliceEndpoint(PARAMS, psk), BobEndpoint(PARAMS, psk)
    rng = np.random.default_rng(2015)
    for _ in range(2):
        estimate, truth, n_sample = _run_attacked_block(alice, bob, rng)
        # she attacks everything but the predicted sample: ~25 % errors in the key frame
        assert truth > 0.2, truth
        sigma = math.sqrt(truth * (1 - truth) / n_sample)
        # the real sample and the real key frame are both uniform draws from the sifted bits,
        # so the estimate is unbiased: only its own sampling error remains
        assert abs(estimate - truth) < 5 * sigma, (estimate, truth)
        assert estimate > PARAMS.qber_threshold  # so the block is aborted, no key from it
