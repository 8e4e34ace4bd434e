"""Privacy amplification by (identity | Toeplitz) hashing (two-universal; leftover hash lemma).

The link compresses an n-bit reconciled frame x = (x1, x2), |x1| = l, to l bits with the l x n
matrix (I | T): out = x1 XOR T x2, where T is the l x (n - l) Toeplitz matrix of a public
uniformly random seed of n - 1 bits (Hayashi & Tsurumaru, IEEE Trans. Inf. Theory 62, 2213
(2016), "More efficient privacy amplification with less random seeds"). It is two-universal:
for x != x' with d = x XOR x' = (d1, d2), a collision needs d1 = T d2, impossible when d2 = 0
(then d1 != 0) and of probability 2^-l otherwise, because a uniformly random Toeplitz matrix maps
any fixed non-zero vector to a uniformly random one. So the leftover hash lemma gives the same
secrecy as a full l x n Toeplitz matrix, from a shorter seed and a shorter FFT (n - 1 instead of
n + l - 1 points; see docs/qkd.md).

The l x m Toeplitz product T[i, j] = s[i - j + m - 1] over GF(2) is a slice of the integer
convolution s * x, computed with a real FFT of length >= m + l - 1 (indices >= m - 1 never wrap
around), then reduced mod 2. Sums are at most m <= 2^23, far inside float64's exact range; we
still check that every value is within 0.25 of an integer before rounding, so a numerical
problem cannot silently corrupt a key.
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
    return _toeplitz_product(bits, seed, out_len)


def _toeplitz_product(bits: np.ndarray, seed: np.ndarray, out_len: int) -> np.ndarray:
    """The out_len x n Toeplitz product by FFT (any out_len >= 1; seed of n + out_len - 1)."""
    n = int(bits.size)
    size = _fast_length(seed.size)
    spectrum = np.fft.rfft(seed.astype(np.float64), size) * np.fft.rfft(
        bits.astype(np.float64), size)
    conv = np.fft.irfft(spectrum, size)[n - 1: n - 1 + out_len]
    rounded = np.rint(conv)
    if np.max(np.abs(conv - rounded), initial=0.0) > 0.25:
        raise ArithmeticError("FFT rounding error too large for exact Toeplitz hashing")
    return (rounded.astype(np.int32) & 1).astype(np.uint8)


def identity_toeplitz_seed_bits(n: int, out_len: int) -> int:
    """Seed bits of the (I | T) hash of an n-bit frame to ``out_len`` bits (n - 1)."""
    return max(0, n - 1) if out_len > 0 else 0


def identity_toeplitz_hash(bits: np.ndarray, seed: np.ndarray, out_len: int) -> np.ndarray:
    """(I | T(seed)) @ bits over GF(2): the first ``out_len`` bits XOR the Toeplitz hash of the
    rest (uint8 0/1). The privacy amplification of the link."""
    n = int(bits.size)
    if out_len <= 0:
        return np.zeros(0, np.uint8)
    if out_len > n:
        raise ValueError("privacy amplification cannot lengthen the key")
    if seed.size != identity_toeplitz_seed_bits(n, out_len):
        raise ValueError(f"(I | T) seed must have {identity_toeplitz_seed_bits(n, out_len)} bits")
    head = np.array(bits[:out_len], np.uint8)
    if out_len == n:  # no compression: the identity
        return head
    return head ^ _toeplitz_product(bits[out_len:], seed, out_len)


def toeplitz_hash_reference(bits: np.ndarray, seed: np.ndarray, out_len: int) -> np.ndarray:
    """Straightforward matrix product (tests only; O(n l))."""
    n = bits.size
    rows = np.arange(out_len)[:, None] - np.arange(n)[None, :] + n - 1
    return ((seed[rows].astype(np.int64) @ bits.astype(np.int64)) & 1).astype(np.uint8)
