"""The (identity | Toeplitz) privacy amplification against the explicit matrix product, and the
two-universality it relies on (docs/qkd.md, "Post-processing speed")."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from keysource.qkd.amplification import identity_toeplitz_hash, identity_toeplitz_seed_bits


def identity_toeplitz_matrix(n: int, out_len: int, seed: np.ndarray) -> np.ndarray:
    """The l x n matrix (I | T), T[i, j] = seed[i - j + (n - l) - 1], written out entry by entry."""
    m = n - out_len
    matrix = np.zeros((out_len, n), np.int64)
    for i in range(out_len):
        matrix[i, i] = 1
        for j in range(m):
            matrix[i, out_len + j] = seed[i - j + m - 1]
    return matrix


@pytest.mark.parametrize("n,out_len", [(1, 1), (2, 1), (64, 63), (65, 65), (130, 2), (500, 200),
                                       (1031, 500)])
def test_identity_toeplitz_hash_equals_the_matrix_product(n: int, out_len: int) -> None:
    rng = np.random.default_rng(n * 7 + out_len)
    assert identity_toeplitz_seed_bits(n, out_len) == n - 1
    for _ in range(3):
        bits = rng.integers(0, 2, n, dtype=np.uint8)
        seed = rng.integers(0, 2, n - 1, dtype=np.uint8)
        expected = (identity_toeplitz_matrix(n, out_len, seed) @ bits.astype(np.int64)) & 1
        got = identity_toeplitz_hash(bits, seed, out_len)
        assert got.dtype == np.uint8 and got.tolist() == expected.tolist()


def test_identity_toeplitz_checks_its_inputs() -> None:
    bits = np.ones(100, np.uint8)
    with pytest.raises(ValueError, match="seed"):
        identity_toeplitz_hash(bits, np.zeros(98, np.uint8), 10)
    with pytest.raises(ValueError, match="lengthen"):
        identity_toeplitz_hash(bits, np.zeros(99, np.uint8), 101)
    assert identity_toeplitz_hash(bits, np.zeros(99, np.uint8), 0).size == 0


def test_identity_toeplitz_family_is_two_universal() -> None:
    """Every pair of distinct 7-bit inputs collides under at most 2^(n-1-l) of the 2^(n-1)
    seeds, i.e. with probability <= 2^-l (exhaustive over seeds and pairs)."""
    n, out_len = 7, 3
    inputs = [np.array(x, np.uint8) for x in itertools.product((0, 1), repeat=n)]
    outputs = np.array([[identity_toeplitz_hash(x, np.array(seed, np.uint8), out_len)
                         for x in inputs] for seed in itertools.product((0, 1), repeat=n - 1)])
    codes = outputs @ (1 << np.arange(out_len))  # (seed, input) -> output as an integer
    bound = 2 ** (n - 1 - out_len)
    for a, b in itertools.combinations(range(len(inputs)), 2):
        assert int((codes[:, a] == codes[:, b]).sum()) <= bound


def one_fft_identity_toeplitz(bits: np.ndarray, seed: np.ndarray, out_len: int) -> np.ndarray:
    """(I | T) by one plain 1-D FFT linear convolution: an independent check of the grid FFT
    at sizes the written-out matrix cannot reach."""
    n, rest = bits.size, bits[out_len:].astype(np.float64)
    size = 1 << (seed.size + rest.size).bit_length()
    conv = np.fft.irfft(np.fft.rfft(seed.astype(np.float64), size) * np.fft.rfft(rest, size), size)
    tail = np.rint(conv[n - out_len - 1: n - 1]).astype(np.int64) & 1
    return (bits[:out_len] ^ tail).astype(np.uint8)


@pytest.mark.parametrize("n,out_len", [(3, 1), (4097, 2000), (65_537, 30_000),
                                       (1_090_001, 520_000)])
def test_grid_fft_matches_a_plain_fft_on_frame_sized_inputs(n: int, out_len: int) -> None:
    rng = np.random.default_rng(n)
    bits = rng.integers(0, 2, n, dtype=np.uint8)
    seed = rng.integers(0, 2, n - 1, dtype=np.uint8)
    assert np.array_equal(identity_toeplitz_hash(bits, seed, out_len),
                          one_fft_identity_toeplitz(bits, seed, out_len))
