"""Cascade, Toeplitz amplification, verification hash and decoy-state estimation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from keysource.qkd import estimation
from keysource.qkd.amplification import toeplitz_hash, toeplitz_hash_reference
from keysource.qkd.cascade import CascadeAlice, CascadeBob, ParityQuery, block_levels, reconcile
from keysource.qkd.params import LinkParams
from keysource.qkd.verification import key_hash


def noisy_pair(n: int, qber: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    alice = rng.integers(0, 2, n, dtype=np.uint8)
    return alice, alice ^ (rng.random(n) < qber).astype(np.uint8)


@pytest.mark.parametrize("qber", [0.005, 0.02, 0.05, 0.08])
def test_cascade_corrects_every_error_and_counts_leakage(qber: float) -> None:
    alice, bob = noisy_pair(1 << 14, qber, seed=int(qber * 1000))
    responder = CascadeAlice(alice, seed=7)
    driver = CascadeBob(bob, qber, seed=7)
    queries = driver.start()
    while queries is not None:
        queries = driver.receive(responder.answer(queries))
    result = driver.result
    assert result is not None
    assert np.array_equal(result.bits, alice)
    assert result.corrected == int((alice != bob).sum())
    # every parity bit Alice sent is counted, on both sides
    assert result.leaked_bits == responder.leaked_bits
    # leakage can never beat the Shannon limit n h(p) by more than chance allows
    errors = int((alice != bob).sum())
    assert result.leaked_bits >= errors  # at least one parity per corrected error path
    efficiency = result.leaked_bits / (alice.size * estimation.binary_entropy(errors / alice.size))
    assert 1.0 <= efficiency < 1.3


def test_cascade_block_sizes_follow_the_demystifying_schedule() -> None:
    levels = block_levels(0.02, 1 << 16)
    alpha = math.log2(1 / 0.02) - 0.5
    assert levels[:3] == [math.ceil(alpha), math.ceil((alpha + 12) / 2), 12]
    assert levels[3:] == [15] * 11


def test_cascade_rejects_questions_outside_the_frame() -> None:
    responder = CascadeAlice(np.zeros(1024, np.uint8), seed=1)
    with pytest.raises(ValueError):
        responder.answer([ParityQuery(0, 3, np.array([1 << 20]))])
    with pytest.raises(ValueError):
        responder.answer([ParityQuery(99, 3, np.array([0]))])
    with pytest.raises(ValueError):
        responder.answer([ParityQuery(0, 3, np.array([-1]))])


def test_cascade_answer_of_the_wrong_size_is_an_error() -> None:
    driver = CascadeBob(np.zeros(2048, np.uint8), 0.02, seed=1)
    queries = driver.start()
    assert queries is not None
    with pytest.raises(ValueError, match="expected"):
        driver.receive(np.zeros(queries[0].ids.size + 1, np.uint8))


def test_reconcile_identical_strings_leaks_only_top_level_parities() -> None:
    alice, _ = noisy_pair(4096, 0.0, seed=3)
    result = reconcile(alice, alice.copy(), 0.01)
    top = sum(-(-4096 // (1 << lv)) for lv in block_levels(0.01, 4096))
    assert result.leaked_bits == top and result.corrected == 0


@pytest.mark.parametrize("n,out_len", [(1, 1), (37, 5), (300, 120), (1000, 1000)])
def test_toeplitz_fft_equals_matrix_product(n: int, out_len: int) -> None:
    rng = np.random.default_rng(n)
    bits = rng.integers(0, 2, n, dtype=np.uint8)
    seed = rng.integers(0, 2, n + out_len - 1, dtype=np.uint8)
    assert np.array_equal(toeplitz_hash(bits, seed, out_len),
                          toeplitz_hash_reference(bits, seed, out_len))


def test_toeplitz_is_linear_and_checks_its_inputs() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 2, (2, 4000), dtype=np.uint8)
    seed = rng.integers(0, 2, 4000 + 1500 - 1, dtype=np.uint8)
    assert np.array_equal(toeplitz_hash(x ^ y, seed, 1500),
                          toeplitz_hash(x, seed, 1500) ^ toeplitz_hash(y, seed, 1500))
    with pytest.raises(ValueError, match="seed"):
        toeplitz_hash(x, seed[:-1], 1500)
    with pytest.raises(ValueError, match="lengthen"):
        toeplitz_hash(x[:10], seed[:19], 10 + 1)


def test_verification_hash_detects_a_single_residual_error() -> None:
    key = np.random.default_rng(2).integers(0, 2, 5000, dtype=np.uint8)
    other = key.copy()
    other[1234] ^= 1
    hash_key = bytes(range(32))
    assert key_hash(key, hash_key) == key_hash(key.copy(), hash_key)
    assert key_hash(key, hash_key) != key_hash(other, hash_key)
    with pytest.raises(ValueError):
        key_hash(key, b"short")


def true_single_photon(params: LinkParams) -> tuple[float, float]:
    y0, eta = params.dark_count_prob, params.eta
    y1 = 1 - (1 - y0) * (1 - eta)
    return y1, (0.5 * y0 + params.misalignment * eta) / y1


@pytest.mark.parametrize("km", [25.0, 100.0])
def test_decoy_bounds_bracket_the_truth_on_expected_counts(km: float) -> None:
    """Feed the estimator the exact expected counts of a large block: the bounds must be
    conservative (Y1_L <= Y1, e1_U >= e1) and, with this much data, tight (within 15 %)."""
    params = LinkParams(fibre_km=km)
    slots = (4e11 * params.p_signal, 4e11 * params.p_decoy, 4e11 * params.p_vacuum)
    y0, eta, ed = params.dark_count_prob, params.eta, params.misalignment
    det, err = [], []
    for n, k in zip(slots, params.intensities, strict=True):
        signal = -math.expm1(-eta * k)
        det.append(round(n * (1 - (1 - y0) * (1 - signal))))
        err.append(round(n * (0.5 * y0 + ed * signal) / 2))  # half are sifted
    stats = estimation.BlockStats(
        slots=tuple(round(s) for s in slots), detections=tuple(det),
        sifted=tuple(d // 2 for d in det), errors=tuple(err),
        revealed=(det[0] // 2, det[1] // 2, det[2] // 2))
    bounds = estimation.decoy_bounds(params, stats)
    y1, e1 = true_single_photon(params)
    assert 0.85 * y1 < bounds.y1_lower <= y1
    assert e1 <= bounds.e1_upper < e1 * 1.6


def test_asymptotic_formula_has_a_distance_limit() -> None:
    assert estimation.lmc_asymptotic_rate(LinkParams(fibre_km=25), 1.1) > 1e-4
    assert estimation.lmc_asymptotic_rate(LinkParams(fibre_km=250), 1.1) < 0


def test_entropy_and_quantile() -> None:
    assert estimation.binary_entropy(0.5) == 1.0
    assert estimation.binary_entropy(0.0) == 0.0
    assert estimation.binary_entropy(0.11) == pytest.approx(0.4999, abs=1e-3)
    assert estimation.gaussian_quantile(0.5) == pytest.approx(0.0, abs=1e-9)
    assert estimation.gaussian_quantile(1e-10) == pytest.approx(6.3613, abs=1e-3)
