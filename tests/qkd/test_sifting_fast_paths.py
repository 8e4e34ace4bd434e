"""The vectorised sifting path against straightforward references on random inputs.

Alice looks up what she sent in Bob's detected slots with chunked binary searches, the SIFT
message carries slot gaps in the narrowest width that holds them, SIFT_REPLY carries intensity
classes as two bit planes, and both ends count clicks per class with comparisons instead of
bincount; a Cascade question carries its node ids in one field. Each is checked here against
the obvious computation, including malformed input.
"""

from __future__ import annotations

import cbor2
import numpy as np
import pytest

from keysource.qkd.cascade import ParityQuery
from keysource.qkd.params import LinkParams
from keysource.qkd.protocol import (
    ProtocolError,
    _decode_queries,
    _encode_queries,
    class_counts,
    decode_classes,
    decode_slots,
    encode_classes,
    encode_slots,
)
from keysource.qkd.source import AliceRecord, alice_view, emit_block, sorted_ranks


def alice_view_reference(record: AliceRecord, detected: np.ndarray, rng: np.random.Generator
                         ) -> tuple[np.ndarray, ...]:
    """One Python lookup per slot; dark-count values drawn in the same order as alice_view."""
    where = {int(s): i for i, s in enumerate(record.slot.tolist())}
    n = detected.size
    cls, basis, bit = (np.zeros(n, np.uint8) for _ in range(3))
    photons = np.zeros(n, np.uint16)
    dark = []
    for k, slot in enumerate(detected.tolist()):
        i = where.get(slot)
        if i is None:
            dark.append(k)
        else:
            cls[k], basis[k], bit[k] = record.cls[i], record.basis[i], record.bit[i]
            photons[k] = record.photons[i]
    if dark:
        cls[dark] = rng.choice(3, size=len(dark), p=record.empty_class_probs)
        basis[dark] = rng.integers(0, 2, len(dark), dtype=np.uint8)
        bit[dark] = rng.integers(0, 2, len(dark), dtype=np.uint8)
    return cls, basis, bit, photons


@pytest.mark.parametrize("size,span,stride", [(0, 10, 4), (5, 10, 4), (3000, 10**6, 64),
                                              (20000, 40000, 1024), (20000, 10**12, 1000)])
def test_sorted_ranks_equal_searchsorted(size: int, span: int, stride: int) -> None:
    rng = np.random.default_rng(size + stride)
    for keep in (1.0, 0.99, 0.3):
        haystack = np.unique(rng.integers(0, span, size))
        mostly_in = haystack[rng.random(haystack.size) < keep]
        for needles in (np.unique(np.concatenate([mostly_in, rng.integers(-5, span + 5, 7)])),
                        np.sort(rng.integers(-5, span + 5, size // 2 + 3)),  # repeats too
                        rng.integers(-5, span + 5, 50)):  # not even sorted
            assert np.array_equal(sorted_ranks(haystack, needles, stride),
                                  np.searchsorted(haystack, needles))


@pytest.mark.parametrize("km,dark", [(25, 1e-6), (100, 1e-3), (0, 5e-3)])
def test_alice_view_matches_a_lookup_per_slot(km: float, dark: float) -> None:
    params = LinkParams(fibre_km=km, dark_count_prob=dark, frame_bits=4096)
    rng = np.random.default_rng(int(km))
    _, record = emit_block(params, 0, rng, n_slots=300_000)
    for keep in (1.0, 0.3):
        detected = record.slot[rng.random(record.slot.size) < keep]
        extra = rng.integers(0, record.n_slots, 500)  # dark counts, some on frame entries
        detected = np.unique(np.concatenate([detected, extra]))
        got = alice_view(record, detected, np.random.default_rng(5))
        want = alice_view_reference(record, detected, np.random.default_rng(5))
        for a, b in zip(got, want, strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b)
    empty = AliceRecord(100, *(np.zeros(0, t) for t in (np.int64, np.uint8, np.uint8, np.uint8,
                                                         np.uint16)))
    got = alice_view(empty, np.array([3, 7]), np.random.default_rng(1))
    want = alice_view_reference(empty, np.array([3, 7]), np.random.default_rng(1))
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize("gap", [1, 255, 256, 65536, 1 << 33])
def test_slot_gaps_round_trip_in_the_narrowest_width(gap: int) -> None:
    rng = np.random.default_rng(gap % 1000)
    slots = np.cumsum(rng.integers(1, gap + 1, 1000)).astype(np.int64)
    slots[-1] = slots[-2] + gap
    width, data = encode_slots(slots)
    assert width == next(w for w in (1, 2, 4, 8) if gap < 1 << (8 * w))
    assert np.array_equal(decode_slots(width, data, slots.size, int(slots[-1]) + 1), slots)
    assert decode_slots(1, b"", 0, 10).size == 0


def test_bad_slot_lists_are_protocol_errors() -> None:
    good = np.array([0, 3, 9], np.int64)
    width, data = encode_slots(good)
    bad = [(3, data, 3, 10), (width, data + b"\0", 3, 10), (width, data, 3, 9),
           (width, np.array([0, 3, 0], np.uint8).tobytes(), 3, 10),  # repeated slot
           (width, "text", 3, 10)]
    # gaps that wrap the 64-bit sum around to a small last slot
    wrap = np.array([5] + [(1 << 62) - 1] * 4 + [8], "<u8").tobytes()
    bad.append((8, wrap, 6, 1 << 62))
    for args in bad:
        with pytest.raises(ProtocolError):
            decode_slots(*args)  # type: ignore[arg-type]


def test_classes_round_trip_and_class_three_is_refused() -> None:
    rng = np.random.default_rng(2)
    for n in (0, 1, 7, 8, 9, 1001):
        cls = rng.integers(0, 3, n).astype(np.uint8)
        assert np.array_equal(decode_classes(encode_classes(cls), n), cls)
    with pytest.raises(ProtocolError, match="class"):
        decode_classes(encode_classes(np.array([0, 3, 1], np.uint8)), 3)
    with pytest.raises(ProtocolError, match="length"):
        decode_classes(b"\0" * 3, 9)


def test_class_counts_match_bincount() -> None:
    rng = np.random.default_rng(4)
    cls = rng.integers(0, 3, 10_000).astype(np.uint8)
    sifted = rng.random(10_000) < 0.5
    detections, kept = class_counts(cls, sifted)
    assert detections == np.bincount(cls, minlength=3).tolist()
    assert kept == np.bincount(cls[sifted], minlength=3).tolist()


def test_cascade_questions_round_trip_and_bad_ones_are_refused() -> None:
    """CASCADE_Q carries all node ids in one field and a count per question."""
    rng = np.random.default_rng(6)
    queries = [ParityQuery(int(p), int(lv), rng.integers(0, 1 << 20, int(k)))
               for p, lv, k in zip(rng.integers(0, 14, 12), rng.integers(0, 20, 12),
                                   rng.integers(0, 40, 12), strict=True)]
    body = cbor2.loads(_encode_queries(queries))
    decoded = _decode_queries(body)
    assert [(q.pass_index, q.level, q.ids.tolist()) for q in decoded] == [
        (q.pass_index, q.level, q.ids.tolist()) for q in queries]
    assert _decode_queries(cbor2.loads(_encode_queries([]))) == []
    ids = np.arange(5, dtype="<u4").tobytes()
    for bad in ({"q": [[0, 1, 4]], "ids": ids}, {"q": [[0, 1, 6]], "ids": ids},
                {"q": [[0, 1, 5]], "ids": ids[:-1]}, {"q": [[-1, 1, 5]], "ids": ids},
                {"q": [[True, 1, 5]], "ids": ids}, {"q": [[0, 1]], "ids": ids},
                {"q": [[0, 1, 5]]}, {"q": "x", "ids": ids}):
        with pytest.raises(ProtocolError):
            _decode_queries(bad)
