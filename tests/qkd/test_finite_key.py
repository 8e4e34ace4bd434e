"""Finite-key bounds (estimation.py, docs/qkd.md) against values computed independently.

The reference values come from exact tails computed here term by term (no shared code with the
estimator), from a hand calculation written out in the test, and from the physics emulation
itself (the PNS model of eve.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from keysource.qkd import estimation
from keysource.qkd.channel import detect
from keysource.qkd.eve import photon_number_splitting
from keysource.qkd.params import SIGNAL, VACUUM, LinkParams
from keysource.qkd.source import alice_view, emit_block


def poisson_cdf(k: int, lam: float) -> float:
    """P(X <= k) for X ~ Poisson(lam), summed term by term in log space."""
    return sum(math.exp(-lam + i * math.log(lam) - math.lgamma(i + 1)) for i in range(k + 1))


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed term by term in log space."""
    log = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
           + i * math.log(p) + (n - i) * math.log1p(-p) for i in range(k + 1)]
    top = max(log)
    return math.exp(top) * sum(math.exp(x - top) for x in log)


def exact_poisson_upper(k: int, eps: float) -> float:
    """The mean at which seeing <= k events has probability eps (Clopper-Pearson for Poisson)."""
    lo, hi = float(k), 10.0 * k + 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if poisson_cdf(k, mid) > eps else (lo, mid)
    return hi


def test_two_vacuum_clicks_are_bounded_by_the_tail_not_by_a_gaussian() -> None:
    """The issue's example: 2 clicks at 1e-10. Gaussian u sqrt(D) gave 11; the exact Poisson
    tail gives 29.1; the Chernoff bound used (valid for any Bernoulli sum) must not be below
    the exact value and should be close to it."""
    exact = exact_poisson_upper(2, 1e-10)
    assert exact == pytest.approx(29.1, abs=0.1)
    gaussian = 2 + estimation.gaussian_quantile(1e-10) * math.sqrt(2)
    assert gaussian == pytest.approx(11.0, abs=0.05)
    bound = estimation.mean_upper(2, 1e-10)
    assert exact <= bound < 1.06 * exact
    # by hand: D(2, m) = 2 ln(2/m) - 2 + m = ln(1e10) = 23.026 at m = 30.47
    assert bound == pytest.approx(30.47, abs=0.01)
    assert estimation.mean_upper(0, 1e-10) == pytest.approx(math.log(1e10), rel=1e-9)


@pytest.mark.parametrize("observed", [0, 1, 5, 40, 300, 5000])
def test_count_bounds_hold_against_exact_tails(observed: int) -> None:
    eps = 1e-10
    upper = estimation.mean_upper(observed, eps)
    assert poisson_cdf(observed, upper) <= eps * 1.0001  # a larger mean is excluded at eps
    lower = estimation.mean_lower(observed, eps)
    if observed:
        # P(X >= observed) at the lower mean is at most eps
        assert 1.0 - poisson_cdf(observed - 1, lower) <= eps * 1.0001
        assert lower < observed < upper
    # a binomial (the sum of Bernoulli trials the Chernoff bound covers) with that mean
    n = 10 * max(upper, 1.0)
    assert binomial_cdf(observed, round(n), upper / round(n)) <= eps * 1.0001


@pytest.mark.parametrize("mean", [30.0, 500.0, 80_000.0])
def test_count_lower_against_the_exact_binomial_tail(mean: float) -> None:
    eps = 1e-10
    floor = estimation.count_lower(mean, eps)
    n = round(4 * mean)
    assert binomial_cdf(math.ceil(floor) - 1, n, mean / n) <= eps if floor >= 1 else True
    assert floor < mean
    if mean > 1000:  # and not wastefully loose: the Poisson-form Chernoff bound is within
        lo, hi = 0, round(mean)  # 1.3 x the exact binomial deviation
        while hi - lo > 1:  # largest k with P(X <= k) <= eps
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if binomial_cdf(mid, n, mean / n) <= eps else (lo, mid)
        assert mean - floor < 1.3 * (mean - lo)


def test_key_length_by_hand() -> None:
    """s1_F = 100000 - (105000 - 100000) = 95000 single photons in the frame,
    phi = 2000 / 95000 = 0.0210526, h(phi) = 0.0210526 * 5.56986 + 0.978947 * 0.0306980
    = 0.147311, 95000 (1 - h) = 81005.45; minus lambda_EC 15000, 6 log2(1e10) = 199.316 and
    log2(2 / 1e-12) = 40.863: l = floor(65765.3) = 65765."""
    bounds = estimation.DecoyBounds(y1_lower=0.03, e1_upper=0.02, s1_signal=100_000.0,
                                    phase_errors=2000.0, signal_sifted=105_000,
                                    test_errors=30.0)
    params = LinkParams()
    assert estimation.eps_sec(params) == pytest.approx(21e-10)
    assert estimation.secure_length(params, bounds, 100_000, 15_000) == 65765
    # every extra leaked bit costs one key bit; too many unused signal bits leave nothing
    assert estimation.secure_length(params, bounds, 100_000, 15_001) == 65764
    assert estimation.secure_length(params, bounds, 4_000, 0) == 0


def independent_length(params: LinkParams, stats: estimation.BlockStats, frame: int,
                       leaked: int) -> int:
    """The docs/qkd.md recipe written out again, with its own Chernoff inversions (scan)."""
    eps = params.eps_pe
    t = math.log(1 / eps)

    def div(x: float, m: float) -> float:
        return m if x == 0 else x * math.log(x / m) - x + m

    def up(x: float) -> float:  # largest m with div(x, m) <= t, by a fine geometric scan
        m = max(x, 1e-9)
        step = 1.0 + 1e-7
        while div(x, m * 1.01) <= t:
            m *= 1.01
        while div(x, m * step) <= t:
            m *= step
        return m

    def down(x: float) -> float:  # smallest m with div(x, m) <= t
        if x == 0:
            return 0.0
        m = x
        while m > 1e-12 and div(x, m / 1.01) <= t:
            m /= 1.01
        while m > 1e-12 and div(x, m / (1 + 1e-7)) <= t:
            m /= 1 + 1e-7
        return m

    def least(m: float) -> float:  # smallest count x with div(x, m) <= t
        if m <= t:
            return 0.0
        x = m
        while div(x / 1.01, m) <= t:
            x /= 1.01
        while div(x / (1 + 1e-7), m) <= t:
            x /= 1 + 1e-7
        return x

    mu, nu = params.mu_signal, params.nu_decoy
    pm, pn, p0 = params.class_probs
    nm = math.exp(mu) / pm * up(stats.detections[0])
    nn = math.exp(nu) / pn * down(stats.detections[1])
    n0 = up(stats.detections[2]) / p0
    y1 = mu / (mu * nu - nu**2) * (nn - nu**2 / mu**2 * nm - (mu**2 - nu**2) / mu**2 * n0)
    s1 = least(pm * mu * math.exp(-mu) * y1 / 2)
    tau0 = pm * math.exp(-mu) + pn * math.exp(-nu) + p0
    tau1 = pm * mu * math.exp(-mu) + pn * nu * math.exp(-nu)
    dark = least(pn * math.exp(-nu) / tau0 * down(stats.errors[2]) * tau0 / p0)
    v = max(0.0, stats.errors[1] - dark)
    k = up(v) * tau1 / (pn * nu * math.exp(-nu)) - v
    s1f = s1 - (stats.sifted[0] - frame)
    phi = k / s1f
    h = -phi * math.log2(phi) - (1 - phi) * math.log2(1 - phi)
    pa_cost = 6 * math.log2(1 / eps) + math.log2(2 / params.eps_cor)
    return math.floor(s1f * (1 - h) - leaked - pa_cost)


@pytest.mark.parametrize("km,frame", [(25, 1 << 17), (100, 1 << 20), (150, 1 << 22)])
def test_key_length_matches_an_independent_implementation(km: float, frame: int) -> None:
    params = LinkParams(fibre_km=km, frame_bits=frame)
    stats = estimation.expected_stats(params)
    leaked = round(1.05 * frame * estimation.binary_entropy(0.012))
    bounds = estimation.decoy_bounds(params, stats)
    mine = estimation.secure_length(params, bounds, frame, leaked)
    theirs = independent_length(params, stats, frame, leaked)
    assert mine > 0
    assert abs(mine - theirs) <= 2 + 1e-5 * mine  # the scans stop within 1e-7 relative


def test_finite_key_rate_grows_with_the_frame_and_stays_below_the_asymptotic_rate() -> None:
    for km in (25, 100):
        rates = [estimation.finite_key_rate(LinkParams(fibre_km=km, frame_bits=f), 1.05)
                 for f in (1 << 17, 1 << 20, 1 << 22)]
        asymptotic = estimation.lmc_asymptotic_rate(LinkParams(fibre_km=km), 1.05)
        assert 0 < rates[0] < rates[1] < rates[2] < asymptotic


def test_pns_fools_the_naive_estimate_but_not_the_decoy_bound() -> None:
    """Expected counts under PNS: the signal click rate and QBER are unchanged, so the naive
    estimate claims as much key as without Eve, while the decoy bound collapses."""
    params = LinkParams(fibre_km=50, frame_bits=1 << 20)
    honest = estimation.expected_stats(params)
    attacked = estimation.expected_stats(params, pns=True)
    assert attacked.detections[0] == pytest.approx(honest.detections[0], rel=0.02)
    assert attacked.detections[1] < 0.5 * honest.detections[1]  # decoys are mostly singles
    naive = estimation.naive_rate(params, 1.05, attacked)
    assert naive == pytest.approx(estimation.naive_rate(params, 1.05, honest), rel=0.03)
    assert estimation.finite_key_rate(params, 1.05, attacked) == 0.0
    assert estimation.gllp_rate(params, 1.05, attacked) == 0.0


def test_pns_model_matches_the_emulated_attack() -> None:
    """expected_stats(pns=True) models eve.py: compare per-class clicks on one emulated block."""
    params = LinkParams(fibre_km=25, frame_bits=1 << 15, fibre_at_receiver=True, seed=5)
    rng = np.random.default_rng(5)
    frame, record = emit_block(params, 0, rng)
    attacked, _ = photon_number_splitting(frame, params, rng)
    clicks = detect(params, attacked, rng)
    cls, _, _, _ = alice_view(record, clicks.slot, rng)
    seen = np.bincount(cls, minlength=3)
    expected = estimation.expected_stats(params, frame.n_slots, pns=True).detections
    for klass in range(SIGNAL, VACUUM + 1):
        assert abs(seen[klass] - expected[klass]) < 6 * math.sqrt(expected[klass]) + 3
