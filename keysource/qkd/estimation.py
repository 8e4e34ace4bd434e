"""Parameter estimation and the finite-key secure length of a block (see docs/qkd.md).

The analysis follows Lim, Curty, Walenta, Xu & Zbinden, "Concise security bounds for practical
decoy-state quantum key distribution", PRA 89, 022307 (2014), adapted to this emulator (both
bases carry key, key bits come from the signal class only, decoy and vacuum bits are all
revealed), with two changes that make it tighter and hold for small counts:

- every count is bounded with the multiplicative Chernoff bound in its exact relative-entropy
  form (valid for any sum of independent Bernoulli trials) instead of Hoeffding's
  sqrt(n/2 ln(21/eps_sec)): 2 observed clicks give a mean of at most 30.4 at 1e-10;
- the phase errors of the key's single photons come from a sampling bound over the random
  signal/decoy labels of the single-photon events (Chernoff again) instead of Lim's gamma.

Every statistical statement fails with probability at most ``eps_pe`` = eps_sec / 21; seven are
used (Lim's accounting allows fifteen), and the key length is Lim's Eq. (1) with s0 = 0:

    l = s1 (1 - h(phi1)) - lambda_EC - 6 log2(21 / eps_sec) - log2(2 / eps_cor)

The link is eps_cor-correct and eps_sec-secret, eps_sec = 21 eps_pe (2.1e-9 with the defaults).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .params import LinkParams


def binary_entropy(p: float) -> float:
    """h(p) = -p log2 p - (1-p) log2 (1-p), with h(0) = h(1) = 0."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -p * math.log2(p) - (1.0 - p) * math.log2(1.0 - p)


def gaussian_quantile(eps: float) -> float:
    """u with P(Z > u) = eps for a standard normal Z (bisection on erfc; no SciPy needed)."""
    lo, hi = 0.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(mid / math.sqrt(2)) > eps:
            lo = mid
        else:
            hi = mid
    return hi


# -- Chernoff bounds -------------------------------------------------------------------------
# For X a sum of independent Bernoulli trials with mean m (any success probabilities):
#   P(X <= x) <= exp(-D(x, m)) for x <= m,   P(X >= x) <= exp(-D(x, m)) for x >= m,
# with D(x, m) = x ln(x/m) - x + m (Chernoff 1952; the Poisson relative entropy). Inverting it
# gives the bounds below; each holds except with probability eps.

def _divergence(x: float, m: float) -> float:
    if m <= 0.0:
        return 0.0 if x <= 0.0 else math.inf
    if x <= 0.0:
        return m
    return x * math.log(x / m) - x + m


def _solve(f_low: float, f_high: float, target: float, d) -> float:  # type: ignore[no-untyped-def]
    """Bisection for d(m) = target on [f_low, f_high] where d is monotone (deterministic)."""
    lo, hi = f_low, f_high
    increasing = d(hi) > d(lo)
    for _ in range(200):
        mid = (lo + hi) / 2
        if (d(mid) > target) == increasing:
            hi = mid
        else:
            lo = mid
    return hi if increasing else lo


def mean_upper(observed: float, eps: float) -> float:
    """Largest mean m that could have produced ``observed`` or fewer successes (P >= eps)."""
    target = math.log(1.0 / eps)
    x = max(0.0, observed)
    hi = x + target + 2.0 * math.sqrt(x * target) + 10.0
    while _divergence(x, hi) < target:
        hi *= 2
    return _solve(x, hi, target, lambda m: _divergence(x, m))


def mean_lower(observed: float, eps: float) -> float:
    """Smallest mean m that could have produced ``observed`` or more successes (P >= eps)."""
    target = math.log(1.0 / eps)
    x = max(0.0, observed)
    if x <= 0.0:
        return 0.0
    return _solve(x * 1e-300 + 1e-300, x, target, lambda m: _divergence(x, m))


def count_lower(mean: float, eps: float) -> float:
    """Fewest successes a sum of Bernoulli trials with this mean gives, except with P eps."""
    target = math.log(1.0 / eps)
    if mean <= target:  # D(0, mean) = mean: zero successes are not excluded
        return 0.0
    return _solve(0.0, mean, target, lambda x: _divergence(x, mean))


# -- block statistics and bounds ---------------------------------------------------------------

@dataclass(frozen=True)
class BlockStats:
    """Public counts both ends agree on after sifting and the test-bit comparison."""

    slots: tuple[int, int, int]  # pulses sent per class (signal, decoy, vacuum)
    detections: tuple[int, int, int]  # clicks per class, all bases
    sifted: tuple[int, int, int]  # clicks per class with matching bases
    errors: tuple[int, int, int]  # errors among the revealed sifted bits per class
    revealed: tuple[int, int, int]  # revealed sifted bits per class (decoy, vacuum: all)

    @property
    def qber_sample(self) -> float:
        """QBER of the signal class from the revealed sample."""
        return self.errors[0] / self.revealed[0] if self.revealed[0] else 1.0


@dataclass(frozen=True)
class DecoyBounds:
    """What the decoy-state analysis proves about one block (all at probability 1 - 7 eps_pe)."""

    y1_lower: float  # single-photon yield per pulse slot, lower bound (Y1_L)
    e1_upper: float  # phase-error rate of the sifted single-photon signal events, upper bound
    s1_signal: float  # sifted single-photon signal events, lower bound (s_mu,1)
    phase_errors: float  # phase errors among them, upper bound (K)
    signal_sifted: int  # sifted signal bits (frame + sample + unused), observed
    test_errors: float  # bit errors among the decoy class's single photons, upper bound (v_T)


def _tau(params: LinkParams, n: int) -> float:
    """tau_n: probability that a pulse carries n photons (all classes)."""
    return sum(p * math.exp(-k) * k ** n / math.factorial(n)
               for p, k in zip(params.class_probs, params.intensities, strict=True))


def decoy_bounds(params: LinkParams, stats: BlockStats) -> DecoyBounds:
    """Vacuum + weak decoy bounds with Chernoff fluctuations (docs/qkd.md, steps 1-4)."""
    mu, nu = params.mu_signal, params.nu_decoy
    p_mu, p_nu, p_0 = params.class_probs
    eps = params.eps_pe
    d_mu, d_nu, d_0 = stats.detections
    # 1. expected detections per class, scaled to y-units: N_k = e^k / p_k * E[n_k]
    n_mu_u = math.exp(mu) / p_mu * mean_upper(d_mu, eps)
    n_nu_l = math.exp(nu) / p_nu * mean_lower(d_nu, eps)
    n_0_u = mean_upper(d_0, eps) / p_0
    # 2. y1 = s1 / tau1 (s1: single-photon detections, all classes); Lim Eq. (3) with mu3 = 0,
    #    where the vacuum class measures y0 directly (the Ma-Qi-Zhao-Lo vacuum + weak decoy form)
    y1_l = mu / (mu * nu - nu * nu) * (
        n_nu_l - nu * nu / (mu * mu) * n_mu_u - (mu * mu - nu * nu) / (mu * mu) * n_0_u)
    y1_l = max(0.0, y1_l)
    total_slots = max(1, sum(stats.slots))
    # 3. sifted single-photon signal events: each single-photon detection is signal with
    #    p(mu|1) = p_mu mu e^-mu / tau1 and sifted with probability 1/2, independently
    s1_signal = count_lower(p_mu * mu * math.exp(-mu) * y1_l / 2.0, eps)
    # 4. phase errors: decoy-class sifted single photons are a random sample (label probability
    #    q) of the sifted single photons of both classes; their bit errors are at most the decoy
    #    errors minus the zero-photon (dark count) errors the vacuum class proves to be there
    tau0 = _tau(params, 0)
    zero_photon_errors = mean_lower(stats.errors[2], eps) * tau0 / p_0
    decoy_dark_errors = count_lower(p_nu * math.exp(-nu) / tau0 * zero_photon_errors, eps)
    test_errors = max(0.0, stats.errors[1] - decoy_dark_errors)
    q = p_nu * nu * math.exp(-nu) / _tau(params, 1)
    all_errors = mean_upper(test_errors, eps) / q
    phase_errors = max(0.0, all_errors - test_errors)
    e1_u = min(0.5, phase_errors / s1_signal) if s1_signal > 0 else 0.5
    return DecoyBounds(y1_l / total_slots, e1_u, s1_signal, phase_errors, stats.sifted[0],
                       test_errors)


def frame_single_photons(bounds: DecoyBounds, frame_bits: int) -> float:
    """Single photons in the key frame, lower bound: every unused signal bit may be one."""
    return bounds.s1_signal - max(0, bounds.signal_sifted - frame_bits)


def secure_length(params: LinkParams, bounds: DecoyBounds, frame_bits: int, leaked: int) -> int:
    """Secret bits extractable from a reconciled frame (0 means no key from this block).

    ``leaked`` is lambda_EC: every parity Cascade revealed plus the verification hash bits.
    """
    s1 = frame_single_photons(bounds, frame_bits)
    if s1 <= 0:
        return 0
    phi = min(0.5, bounds.phase_errors / s1)
    length = (
        s1 * (1.0 - binary_entropy(phi))
        - leaked
        - 6.0 * math.log2(1.0 / params.eps_pe)
        - math.log2(2.0 / params.eps_cor)
    )
    return max(0, math.floor(length))


def eps_sec(params: LinkParams) -> float:
    """The secrecy parameter the key length above proves (Lim et al.: 21 eps_pe)."""
    return 21.0 * params.eps_pe


def eps_total(params: LinkParams) -> float:
    """Overall security parameter: eps_sec-secret and eps_cor-correct."""
    return eps_sec(params) + params.eps_cor


# -- formulas on expected counts (bench, tests, docs) ------------------------------------------

def expected_stats(params: LinkParams, pulses: int | None = None, *,
                   pns: bool = False) -> BlockStats:
    """The counts a block of ``pulses`` slots gives on average (PNS: as Eve arranges them).

    Under the photon-number-splitting attack of eve.py, multi-photon pulses reach Bob losslessly
    minus the split photon, and single photons are blocked so that Bob's signal click rate stays
    at its expected value; errors are misalignment and dark counts only.
    """
    n = params.pulses_for_block() if pulses is None else pulses
    y0, ed, eta_d = params.dark_count_prob, params.misalignment, params.detector_efficiency
    probs, intensities = params.class_probs, params.intensities
    pass_single, thin = pns_passing(params) if pns else (0.0, 1.0)
    slots, det, sifted, errors = [], [], [], []
    for p, k in zip(probs, intensities, strict=True):
        pulses_k = n * p
        if pns:
            signal_gain = k * math.exp(-k) * eta_d * pass_single + _pns_multi_gain(k, eta_d) * thin
        else:
            signal_gain = -math.expm1(-params.eta * k)
        gain = 1.0 - (1.0 - y0) * (1.0 - signal_gain)
        slots.append(round(pulses_k))
        det.append(round(pulses_k * gain))
        sifted.append(round(pulses_k * gain / 2))
        errors.append(round(pulses_k * (0.5 * y0 + ed * signal_gain) / 2))
    sample = params.sample_bits
    e_mu = errors[0] / max(1, sifted[0])
    return BlockStats(tuple(slots), tuple(det), tuple(sifted),  # type: ignore[arg-type]
                      (round(sample * e_mu), errors[1], errors[2]),
                      (sample, sifted[1], sifted[2]))


def pns_passing(params: LinkParams) -> tuple[float, float]:
    """(share of single-photon pulses Eve lets through, share of multi-photon pulses she
    forwards) so that Bob's overall click rate stays what the fibre would give (eve.py)."""
    eta_d = params.detector_efficiency
    classes = list(zip(params.class_probs, params.intensities, strict=True))
    target = sum(p * -math.expm1(-params.eta * k) for p, k in classes)
    multi = sum(p * _pns_multi_gain(k, eta_d) for p, k in classes)
    singles = sum(p * k * math.exp(-k) * eta_d for p, k in classes)
    if multi >= target:
        return 0.0, target / multi
    return min(1.0, (target - multi) / singles), 1.0


def pns_known_share(params: LinkParams) -> float:
    """Share of Bob's signal-class clicks under PNS whose bit Eve holds (the split photons)."""
    pass_single, thin = pns_passing(params)
    mu, eta_d = params.mu_signal, params.detector_efficiency
    multi = _pns_multi_gain(mu, eta_d) * thin
    return multi / (multi + mu * math.exp(-mu) * eta_d * pass_single)


def _pns_multi_gain(k: float, eta_d: float) -> float:
    """Per-pulse click probability of the multi-photon pulses PNS forwards losslessly: a pulse
    of n >= 2 photons arrives with n - 1, each seen by the detector with probability eta_d.

    sum_{n>=2} P(n) (1 - (1 - eta_d)^(n-1)) = P(n>=2) - e^-k (e^(k r) - 1 - k r) / r, r = 1 - eta_d
    """
    r = 1.0 - eta_d
    p_multi = 1.0 - math.exp(-k) * (1.0 + k)
    none_seen = math.exp(-k) * (math.exp(k * r) - 1.0 - k * r) / r if r > 0 else 0.0
    return p_multi - none_seen


def finite_key_rate(params: LinkParams, f_ec: float, stats: BlockStats | None = None) -> float:
    """Key per pulse slot the finite-key length gives for one block of ``params.frame_bits``,
    on expected counts (or the given ones) and Cascade efficiency ``f_ec``."""
    stats = expected_stats(params) if stats is None else stats
    bounds = decoy_bounds(params, stats)
    frame = min(params.frame_bits, stats.sifted[0] - params.sample_bits)
    if frame <= 0:
        return 0.0
    leaked = math.ceil(f_ec * frame * binary_entropy(_signal_qber(stats))) + 128
    return secure_length(params, bounds, frame, leaked) / max(1, sum(stats.slots))


def _signal_qber(stats: BlockStats) -> float:
    return stats.errors[0] / stats.revealed[0] if stats.revealed[0] else 0.5


def naive_rate(params: LinkParams, f_ec: float, stats: BlockStats | None = None) -> float:
    """Key per pulse if every signal click were a single photon (no decoy, no GLLP): what an
    implementation without photon-number analysis would claim, and what PNS steals from."""
    stats = expected_stats(params) if stats is None else stats
    e = _signal_qber(stats)
    q_sift = stats.sifted[0] / max(1, sum(stats.slots))
    return max(0.0, q_sift * (1.0 - binary_entropy(e) - f_ec * binary_entropy(e)))


def gllp_rate(params: LinkParams, f_ec: float, stats: BlockStats | None = None) -> float:
    """GLLP without decoys (Gottesman, Lo, Lutkenhaus & Preskill 2004), asymptotic: every
    multi-photon pulse is assumed detected and known to Eve (the PNS-proof bound)."""
    stats = expected_stats(params) if stats is None else stats
    mu = params.mu_signal
    n_mu = max(1, stats.slots[0])
    q_mu = stats.detections[0] / n_mu
    if q_mu <= 0:
        return 0.0
    multi = 1.0 - math.exp(-mu) * (1.0 + mu)
    single_share = 1.0 - multi / q_mu
    if single_share <= 0:
        return 0.0
    e = _signal_qber(stats)
    e1 = min(0.5, e / single_share)
    rate = stats.sifted[0] / max(1, sum(stats.slots)) * (
        single_share * (1.0 - binary_entropy(e1)) - f_ec * binary_entropy(e))
    return max(0.0, rate)


def lmc_asymptotic_rate(params: LinkParams, f_ec: float) -> float:
    """Lo-Ma-Chen asymptotic decoy-state key per pulse slot on the same parameters.

    R = p_signal * q * [Q1 (1 - h(e1)) - f Q_mu h(E_mu)], q = 1/2 (sifting), with the true
    single-photon yield and error (the infinite-decoy limit). Negative means no key.
    """
    mu, eta, y0, ed = params.mu_signal, params.eta, params.dark_count_prob, params.misalignment
    q_mu = 1.0 - (1.0 - y0) * math.exp(-eta * mu)
    e_mu = (0.5 * y0 + ed * (1.0 - math.exp(-eta * mu))) / q_mu
    y1 = 1.0 - (1.0 - y0) * (1.0 - eta)
    e1 = (0.5 * y0 + ed * eta) / y1
    q1 = y1 * mu * math.exp(-mu)
    return params.p_signal * 0.5 * (
        q1 * (1.0 - binary_entropy(e1)) - f_ec * q_mu * binary_entropy(e_mu)
    )
