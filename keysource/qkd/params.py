"""Link parameters: the physics of the emulated fibre link and the post-processing knobs.

Defaults describe a realistic metro link (25 km of standard fibre at 0.2 dB/km, an InGaAs
single-photon detector with 10 % efficiency and 1e-6 dark counts per gate, 1 % optical
misalignment, a 1 GHz source) running decoy-state BB84 with vacuum + weak decoy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SIGNAL, DECOY, VACUUM = 0, 1, 2  # intensity classes, as announced by Alice


@dataclass(frozen=True)
class LinkParams:
    """Everything one end of a link needs to know; both ends must use the same values."""

    fibre_km: float = 25.0
    loss_db_per_km: float = 0.2
    detector_efficiency: float = 0.10
    dark_count_prob: float = 1e-6  # per pulse slot, both of Bob's detectors together (Y0)
    misalignment: float = 0.01  # e_d: probability a photon hits the wrong detector
    pulse_rate_hz: float = 1e9
    mu_signal: float = 0.5
    nu_decoy: float = 0.1
    p_signal: float = 0.80
    p_decoy: float = 0.10  # the vacuum class gets the rest
    qber_threshold: float = 0.11
    # Post-processing: reconciliation frame of this many sifted signal bits per block,
    # plus a revealed sample for the QBER estimate.
    frame_bits: int = 1 << 17
    sample_fraction: float = 1 / 32
    min_sample_bits: int = 2048
    eps_pe: float = 1e-10  # failure probability of each parameter-estimation bound
    eps_pa: float = 1e-10  # privacy amplification (leftover hash lemma)
    eps_cor: float = 1e-12  # verification hash collision (Poly1305 bound is far below this)
    seed: int | None = None
    # Emulate the fibre loss at Bob's end, so that a man in the middle acts on pulses as they
    # leave Alice (needed for photon-number splitting); costs 1/transmittance more frame volume.
    fibre_at_receiver: bool = False
    # Attacks applied by the pair runner (in TCP mode a `qsecret eve` proxy does this instead).
    intercept_fraction: float = 0.0
    pns: bool = False
    tamper_classical_every: int = 0  # tamper one classical message in every Nth block; 0 = never
    # Authentication key kept per direction (bytes); refilled from each good block's output.
    auth_pool_bytes: int = 8192

    def __post_init__(self) -> None:
        checks = [
            (self.fibre_km >= 0, "fibre_km must be >= 0"),
            (self.loss_db_per_km >= 0, "loss_db_per_km must be >= 0"),
            (0 < self.detector_efficiency <= 1, "detector_efficiency must be in (0, 1]"),
            (0 <= self.dark_count_prob < 0.01, "dark_count_prob must be in [0, 0.01)"),
            (0 <= self.misalignment < 0.5, "misalignment must be in [0, 0.5)"),
            (self.pulse_rate_hz > 0, "pulse_rate_hz must be > 0"),
            (self.mu_signal > self.nu_decoy > 0, "need mu_signal > nu_decoy > 0"),
            (0 < self.p_signal < 1 and 0 < self.p_decoy < 1
             and self.p_signal + self.p_decoy < 1, "p_signal, p_decoy and vacuum must be > 0"),
            (0 < self.qber_threshold < 0.5, "qber_threshold must be in (0, 0.5)"),
            (1024 <= self.frame_bits <= 1 << 22, "frame_bits must be in [1024, 4194304]"),
            (0 < self.sample_fraction < 1, "sample_fraction must be in (0, 1)"),
            (self.min_sample_bits >= 64, "min_sample_bits must be >= 64"),
            (0 <= self.intercept_fraction <= 1, "intercept_fraction must be in [0, 1]"),
            (self.tamper_classical_every >= 0, "tamper_classical_every must be >= 0"),
            (self.auth_pool_bytes >= 1024, "auth_pool_bytes must be >= 1024"),
            (self.seed is None or self.seed >= 0, "seed must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def p_vacuum(self) -> float:
        return 1.0 - self.p_signal - self.p_decoy

    @property
    def transmittance(self) -> float:
        """Fibre transmittance t = 10^(-alpha L / 10)."""
        return 10.0 ** (-self.loss_db_per_km * self.fibre_km / 10.0)

    @property
    def eta(self) -> float:
        """Overall single-photon detection probability: fibre transmittance x detector."""
        return self.transmittance * self.detector_efficiency

    @property
    def intensities(self) -> tuple[float, float, float]:
        return (self.mu_signal, self.nu_decoy, 0.0)

    @property
    def class_probs(self) -> tuple[float, float, float]:
        return (self.p_signal, self.p_decoy, self.p_vacuum)

    @property
    def sample_bits(self) -> int:
        return max(self.min_sample_bits, math.ceil(self.frame_bits * self.sample_fraction))

    def expected_gain(self) -> float:
        """Expected detections per pulse slot (all classes, Y0 + 1 - e^(-eta k))."""
        y0 = self.dark_count_prob
        return sum(
            p * (1.0 - (1.0 - y0) * math.exp(-self.eta * k))
            for p, k in zip(self.class_probs, self.intensities, strict=True)
        )

    def pulses_for_block(self) -> int:
        """Pulse slots Alice sends so the sifted signal bits almost surely cover frame + sample.

        Expected sifted signal bits per slot is p_signal * Q_mu / 2; we add six standard
        deviations so that a short block (and a smaller frame) is a rare event.
        """
        y0 = self.dark_count_prob
        q_mu = 1.0 - (1.0 - y0) * math.exp(-self.eta * self.mu_signal)
        per_slot = self.p_signal * q_mu / 2.0
        need = self.frame_bits + self.sample_bits
        need += 6.0 * math.sqrt(need) + 16
        return int(math.ceil(need / per_slot))
