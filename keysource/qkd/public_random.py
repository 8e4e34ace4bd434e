"""Where one link endpoint's public random choices come from: the OS, or ``--seed``.

Public choices are announced in the clear and only need to be unpredictable *before* they are
announced: the QBER sample positions, the Cascade permutations, the verification hash key, the
Toeplitz seed and the key_IDs. Without a seed they come from the OS (``os.urandom``), as in a
real link. With ``LinkParams.seed`` (``--seed``, for reproducible runs and tests) each comes
from SHAKE-256 over (seed, role, use, block number): domain-separated per use, independent of
the order in which blocks ran or aborted, so two runs with the same seed (and PSK) produce
byte-identical keys and key_IDs, and a link restarted at block N repeats no earlier choice.

Secrets never come from here: the PSK and the Wegman-Carter authentication keys are drawn from
the OS (auth.make_psk) or taken from the link's own output.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from keysource.uuid_text import version4_uuids

_DOMAIN = b"qsecret qkd public choice v1"


class PublicRandom:
    """One endpoint's source of public random bytes (seeded, or the OS)."""

    def __init__(self, seed: int | None, role: str) -> None:
        self.seed = seed
        self.role = role

    @property
    def seeded(self) -> bool:
        return self.seed is not None

    def draw(self, use: str, block: int, size: int) -> bytes:
        """``size`` random bytes for ``use`` in ``block``."""
        if self.seed is None:
            return os.urandom(size)
        label = b"\x00".join([_DOMAIN, str(self.seed).encode(), self.role.encode(),
                              use.encode(), str(block).encode()])
        return hashlib.shake_256(label).digest(size)

    def integer(self, use: str, block: int, size: int = 8) -> int:
        """A random non-negative integer of ``size`` bytes."""
        return int.from_bytes(self.draw(use, block, size), "big")

    def bits(self, use: str, block: int, count: int) -> np.ndarray:
        """``count`` random bits (uint8 0/1)."""
        raw = np.frombuffer(self.draw(use, block, (count + 7) // 8), np.uint8)
        return np.unpackbits(raw, count=count)

    def key_ids(self, block: int, count: int) -> list[str]:
        """``count`` version-4 UUIDs (122 random bits each) for the keys of ``block``."""
        return version4_uuids(self.draw("key_ids", block, 16 * count))
