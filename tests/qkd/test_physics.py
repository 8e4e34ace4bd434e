"""Statistics of the emulated quantum channel against the textbook formulas.

Tolerances: every check compares a count with its expectation and allows 5 standard deviations
of the binomial count (a false failure has probability ~6e-7 per check), with fixed seeds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from keysource.qkd.channel import detect
from keysource.qkd.eve import attack_frame
from keysource.qkd.params import DECOY, SIGNAL, LinkParams
from keysource.qkd.source import alice_view, emit_block

SIGMAS = 5.0


def run_block(params: LinkParams, seed: int, **attack: object):
    rng = np.random.default_rng(seed)
    frame, record = emit_block(params, 0, rng)
    knowledge = None
    if attack:
        frame, knowledge = attack_frame(frame, params, rng, **attack)  # type: ignore[arg-type]
    det = detect(params, frame, rng)
    cls, basis, bit, _ = alice_view(record, det.slot, rng)
    return record, det, cls, basis, bit, knowledge


def assert_binomial(successes: int, trials: int, p: float) -> None:
    sigma = math.sqrt(trials * p * (1 - p))
    assert abs(successes - trials * p) <= SIGMAS * sigma + 1, (successes, trials * p, sigma)


def expected_gain_and_qber(params: LinkParams, intensity: float) -> tuple[float, float]:
    """Lo-Ma-Chen channel model: Q = 1-(1-Y0)e^{-eta k}, E Q = Y0/2 + e_d (1-e^{-eta k})."""
    y0, ed = params.dark_count_prob, params.misalignment
    signal = -math.expm1(-params.eta * intensity)
    gain = 1 - (1 - y0) * (1 - signal)
    return gain, (0.5 * y0 + ed * signal) / gain


@pytest.mark.parametrize("km", [10.0, 25.0, 80.0])
def test_gain_sifting_and_qber_match_the_channel_model(km: float) -> None:
    params = LinkParams(fibre_km=km, frame_bits=1 << 15)
    record, det, cls, basis, bit, _ = run_block(params, seed=int(km))
    sifted = basis == det.basis
    # sifting keeps each detection with probability 1/2 (independent random bases)
    assert_binomial(int(sifted.sum()), det.slot.size, 0.5)
    for klass, intensity in ((SIGNAL, params.mu_signal), (DECOY, params.nu_decoy)):
        gain, qber = expected_gain_and_qber(params, intensity)
        assert_binomial(int((cls == klass).sum()), int(record.class_slots[klass]), gain)
        mask = sifted & (cls == klass)
        assert_binomial(int((bit[mask] != det.bit[mask]).sum()), int(mask.sum()), qber)


def test_dark_counts_alone_give_vacuum_yield_and_half_errors() -> None:
    params = LinkParams(dark_count_prob=5e-4, frame_bits=1 << 14)
    record, det, cls, basis, bit, _ = run_block(params, seed=3)
    vac = cls == 2
    assert_binomial(int(vac.sum()), int(record.class_slots[2]), params.dark_count_prob)
    mask = vac & (basis == det.basis)
    assert_binomial(int((bit[mask] != det.bit[mask]).sum()), int(mask.sum()), 0.5)


@pytest.mark.parametrize("fraction", [1.0, 0.4])
def test_intercept_resend_qber(fraction: float) -> None:
    params = LinkParams(frame_bits=1 << 15)
    _, det, cls, basis, bit, knowledge = run_block(params, seed=11,
                                                   intercept_fraction=fraction, pns=False)
    mask = (basis == det.basis) & (cls == SIGNAL)
    ed = params.misalignment
    # intercepted: wrong Eve basis (1/2) -> random (1/2 error); right basis -> e_d
    _, base_qber = expected_gain_and_qber(params, params.mu_signal)
    expected = (1 - fraction) * base_qber + fraction * (0.25 + ed / 2)
    assert_binomial(int((bit[mask] != det.bit[mask]).sum()), int(mask.sum()), expected)
    # Eve knows the bit wherever she guessed the basis: half of what she intercepted
    assert_binomial(int(knowledge.slot.size), det.slot.size, fraction / 2)


def test_pns_keeps_qber_and_signal_gain_but_starves_decoys() -> None:
    params = LinkParams(frame_bits=1 << 15, fibre_at_receiver=True)
    record, det, cls, basis, bit, knowledge = run_block(params, seed=5,
                                                        intercept_fraction=0.0, pns=True)
    gain_mu, qber_mu = expected_gain_and_qber(params, params.mu_signal)
    gain_nu, _ = expected_gain_and_qber(params, params.nu_decoy)
    mask = (basis == det.basis) & (cls == SIGNAL)
    assert_binomial(int((bit[mask] != det.bit[mask]).sum()), int(mask.sum()), qber_mu)
    # Eve matches Bob's total click rate, so the signal gain stays within a few percent ...
    signal_gain = (cls == SIGNAL).sum() / record.class_slots[SIGNAL]
    assert abs(signal_gain / gain_mu - 1) < 0.05
    # ... but decoys (mostly single photons, which she blocks) arrive far less often
    decoy_gain = (cls == DECOY).sum() / record.class_slots[DECOY]
    assert decoy_gain < 0.8 * gain_nu
    # and she holds a photon of every multi-photon pulse Bob detected
    assert knowledge.slot.size > 0.3 * det.slot.size


def test_pns_refuses_frames_already_attenuated() -> None:
    params = LinkParams(frame_bits=2048)
    frame, _ = emit_block(params, 0, np.random.default_rng(1))
    with pytest.raises(ValueError, match="fibre_at_receiver"):
        attack_frame(frame, params, np.random.default_rng(2), intercept_fraction=0, pns=True)


def test_fibre_at_receiver_gives_the_same_statistics() -> None:
    near = LinkParams(frame_bits=1 << 15, fibre_at_receiver=True)
    record, det, cls, basis, bit, _ = run_block(near, seed=21)
    gain, qber = expected_gain_and_qber(near, near.mu_signal)
    assert_binomial(int((cls == SIGNAL).sum()), int(record.class_slots[SIGNAL]), gain)


def test_bad_parameters_are_rejected_clearly() -> None:
    with pytest.raises(ValueError, match="qber_threshold"):
        LinkParams(qber_threshold=0.7)
    with pytest.raises(ValueError, match="mu_signal > nu_decoy"):
        LinkParams(mu_signal=0.1, nu_decoy=0.2)
