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
convolution s * x, computed with real FFTs of length >= m + l - 1 (indices >= m - 1 never wrap
around), then reduced mod 2. Sums are at most m <= 2^23, far inside float64's exact range; we
still check that every value is within 0.25 of an integer before rounding, so a numerical
problem cannot silently corrupt a key.

The FFTs are taken in two passes over a rows x cols grid (the "four-step" decomposition of a
length rows * cols transform: short transforms down the columns, a twiddle factor, short
transforms along the rows). numpy's pocketfft runs many short transforms of a 2-D array with
SIMD and in cache, where one 1-D transform of a million points does neither: half the time for
a 1 Mbit frame (docs/qkd.md). The spectrum comes out in a permuted order, which a convolution
does not mind: both factors use the same order, and the inverse transform undoes it.
"""

from __future__ import annotations

from functools import lru_cache

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
    conv = _cyclic_convolution(seed, bits, seed.size)[n - 1: n - 1 + out_len]
    rounded = np.rint(conv)
    if np.max(np.abs(conv - rounded), initial=0.0) > 0.25:
        raise ArithmeticError("FFT rounding error too large for exact Toeplitz hashing")
    return (rounded.astype(np.int32) & 1).astype(np.uint8)


def _grid(size: int) -> tuple[int, int]:
    """A rows x cols grid of at least ``size`` points: rows a power of two near the square root
    (the strided column pass is fastest on those), cols the smallest smooth length that
    completes it."""
    rows = 1 << max(1, (size.bit_length() - 1) // 2)
    return rows, _fast_length(-(-size // rows))


@lru_cache(maxsize=2)
def _twiddles(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """exp(-2 pi i k r / (rows cols)) for row frequency k <= rows / 2 and column r, and its
    conjugate (read-only). A link's frames, whose lengths vary by a percent or so, need one or
    two grids, so these are computed once: two grids of a 1 Mbit frame hold 36 MB."""
    size = rows * cols
    turns = (np.arange(rows // 2 + 1, dtype=np.int64)[:, None]
             * np.arange(cols, dtype=np.int64)[None, :]) % size  # exact before the float
    forward = np.exp(turns * (-2j * np.pi / size))
    backward = np.conj(forward)
    forward.flags.writeable = backward.flags.writeable = False
    return forward, backward


def _spectrum(values: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The DFT of ``values`` zero-padded to rows * cols points, the half a real input needs:
    entry [k2, k1] is frequency k2 + rows * k1, for k2 <= rows / 2."""
    grid = np.zeros((rows, cols))
    grid.reshape(-1)[: values.size] = values
    half = np.fft.rfft(grid, axis=0)
    half *= _twiddles(rows, cols)[0]
    return np.fft.fft(half, axis=1, out=half)


def _cyclic_convolution(a: np.ndarray, b: np.ndarray, size: int) -> np.ndarray:
    """The cyclic convolution of two real sequences on at least ``size`` points (zero-padded;
    the result may be longer than ``size``)."""
    rows, cols = _grid(size)
    product = _spectrum(a, rows, cols)
    product *= _spectrum(b, rows, cols)
    np.fft.ifft(product, axis=1, out=product)
    product *= _twiddles(rows, cols)[1]
    return np.fft.irfft(product, rows, axis=0).reshape(-1)


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
