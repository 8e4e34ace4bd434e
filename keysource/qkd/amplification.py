"""Privacy amplification by Toeplitz hashing (a two-universal family; leftover hash lemma).

The l x n Toeplitz matrix T[i, j] = s[i - j + n - 1] is fixed by a public uniformly random seed s
of n + l - 1 bits chosen by Alice. T x over GF(2) is a slice of the integer convolution s * x,
computed with a real FFT of length >= n + l - 1 (indices >= n - 1 never wrap around), then
reduced mod 2. Sums are at most n <= 2^23, far inside float64's exact range; we still check that
every value is within 0.25 of an integer before rounding, so a numerical problem cannot silently
corrupt a key.
"""

from __future__ import annotations

import numpy as np


def seed_bits_needed(n: int, out_len: int) -> int:
    return n + out_len - 1


def _fast_length(size: int) -> int:
    """Smallest 2^a 3^b 5^c >= size (pocketfft is fastest on such smooth lengths)."""
    best = 1 << max(0, size - 1).bit_length()
    five = 1
    while five < best:
        three = five
        while three < best:
            cand = three << max(0, (-(-size // three) - 1).bit_length())
            if size <= cand < best:
                best = cand
            three *= 3
        five *= 5
    return best


def toeplitz_hash(bits: np.ndarray, seed: np.ndarray, out_len: int) -> np.ndarray:
    """T(seed) @ bits over GF(2): ``out_len`` output bits (uint8 0/1)."""
    n = int(bits.size)
    if out_len <= 0:
        return np.zeros(0, np.uint8)
    if out_len > n:
        raise ValueError("privacy amplification cannot lengthen the key")
    if seed.size != seed_bits_needed(n, out_len):
        raise ValueError(f"Toeplitz seed must have {seed_bits_needed(n, out_len)} bits")
    size = _fast_length(seed.size)
    spectrum = np.fft.rfft(seed.astype(np.float64), size) * np.fft.rfft(
        bits.astype(np.float64), size)
    conv = np.fft.irfft(spectrum, size)[n - 1: n - 1 + out_len]
    rounded = np.rint(conv)
    if np.max(np.abs(conv - rounded), initial=0.0) > 0.25:
        raise ArithmeticError("FFT rounding error too large for exact Toeplitz hashing")
    return (rounded.astype(np.int32) & 1).astype(np.uint8)


def toeplitz_hash_reference(bits: np.ndarray, seed: np.ndarray, out_len: int) -> np.ndarray:
    """Straightforward matrix product (tests only; O(n l))."""
    n = bits.size
    rows = np.arange(out_len)[:, None] - np.arange(n)[None, :] + n - 1
    return ((seed[rows].astype(np.int64) @ bits.astype(np.int64)) & 1).astype(np.uint8)
