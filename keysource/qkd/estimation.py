"""Parameter estimation: QBER and the vacuum + weak decoy bounds (Lo, Ma & Chen, PRL 94 230504;
Ma, Qi, Zhao & Lo, PRA 72 012326), with statistical fluctuations, and the secure key length.

Finite-size treatment (stated, not hidden): every observed count D is widened to D +- u sqrt(D)
with u the one-sided Gaussian quantile for eps_pe (the Ma et al. 2005 treatment); the number of
single-photon bits in the key frame gets the same widening; the phase error of single-photon bits
is taken equal to their bit error e1 (basis-symmetric BB84, as in GLLP/LMC); the vacuum-pulse
contribution to the key is ignored (conservative). Key length:

    l = s1 (1 - h(e1_U)) - leak_EC - leak_verify - 2 log2(1/(2 eps_pa)) - log2(2/eps_cor)

so the composable security parameter is eps_sec <= eps_cor + eps_pa + 6 eps_pe (about 7e-10
with the defaults).
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


def _upper(count: float, u: float) -> float:
    return count + u * math.sqrt(count) if count > 0 else u * u


def _lower(count: float, u: float) -> float:
    return max(0.0, count - u * math.sqrt(count))


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
    y0_upper: float
    y1_lower: float
    e1_upper: float
    q1_lower: float
    q_mu_upper: float
    single_photon_fraction: float  # lower bound on single-photon share of signal clicks


def decoy_bounds(params: LinkParams, stats: BlockStats) -> DecoyBounds:
    """Lower bound on Y1 and upper bound on e1 from vacuum + weak decoy, with fluctuations."""
    mu, nu = params.mu_signal, params.nu_decoy
    u = gaussian_quantile(params.eps_pe)
    n_mu, n_nu, n_0 = (max(1, s) for s in stats.slots)
    d_mu, d_nu, d_0 = stats.detections
    y0_u = _upper(d_0, u) / n_0
    y0_l = _lower(d_0, u) / n_0
    q_nu_l = _lower(d_nu, u) / n_nu
    q_nu_u = _upper(d_nu, u) / n_nu
    q_mu_u = _upper(d_mu, u) / n_mu
    y1_l = mu / (mu * nu - nu * nu) * (
        q_nu_l * math.exp(nu)
        - q_mu_u * math.exp(mu) * nu * nu / (mu * mu)
        - (mu * mu - nu * nu) / (mu * mu) * y0_u
    )
    y1_l = max(0.0, y1_l)
    sifted_nu = max(1, stats.revealed[1])
    eq_nu_u = _upper(stats.errors[1], u) / sifted_nu * q_nu_u
    if y1_l > 0:
        e1_u = (eq_nu_u * math.exp(nu) - 0.5 * y0_l) / (y1_l * nu)
        e1_u = min(0.5, max(0.0, e1_u))
    else:
        e1_u = 0.5
    q1_l = y1_l * mu * math.exp(-mu)
    fraction = min(1.0, q1_l / q_mu_u) if q_mu_u > 0 else 0.0
    return DecoyBounds(y0_u, y1_l, e1_u, q1_l, q_mu_u, fraction)


def secure_length(params: LinkParams, bounds: DecoyBounds, frame_bits: int, leaked: int) -> int:
    """Secret bits extractable from a reconciled frame (<= 0 means no key from this block)."""
    u = gaussian_quantile(params.eps_pe)
    f = bounds.single_photon_fraction
    s1 = frame_bits * f - u * math.sqrt(frame_bits * f * (1.0 - f))
    if s1 <= 0:
        return 0
    length = (
        s1 * (1.0 - binary_entropy(bounds.e1_upper))
        - leaked
        - 2.0 * math.log2(1.0 / (2.0 * params.eps_pa))
        - math.log2(2.0 / params.eps_cor)
    )
    return max(0, math.floor(length))


def eps_sec(params: LinkParams) -> float:
    """The composable security parameter the key length above achieves."""
    return params.eps_cor + params.eps_pa + 6 * params.eps_pe


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
