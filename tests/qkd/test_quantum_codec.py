"""The quantum frame codec: gaps without a prepended copy and an in-place running sum must
give the frames of the straightforward np.diff / np.cumsum code, and still refuse slot lists
that do not increase."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from keysource.qkd.params import LinkParams
from keysource.qkd.protocol import (
    _QHEADER,
    ProtocolError,
    decode_quantum,
    encode_quantum,
    encode_slots,
)
from keysource.qkd.source import emit_block


def _frame(seed: int) -> object:
    frame, _ = emit_block(LinkParams(frame_bits=4096), 0, np.random.default_rng(seed))
    return frame


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_quantum_frame_round_trips_and_carries_the_reference_gaps(seed: int) -> None:
    frame = _frame(seed)
    data = encode_quantum(frame)
    gaps = np.diff(frame.slot, prepend=0).astype(">u4").tobytes()
    assert data[1 + _QHEADER.size: 1 + _QHEADER.size + len(gaps)] == gaps
    back = decode_quantum(data)
    assert np.array_equal(back.slot, np.cumsum(np.diff(frame.slot, prepend=0)))
    for name in ("slot", "basis", "bit", "photons", "capable", "lossless"):
        assert np.array_equal(getattr(back, name), getattr(frame, name)), name


@pytest.mark.parametrize("position", [1, 7])
def test_a_quantum_frame_whose_slots_do_not_increase_is_refused(position: int) -> None:
    raw = bytearray(encode_quantum(_frame(4)))
    start = 1 + _QHEADER.size + 4 * position
    raw[start: start + 4] = struct.pack(">I", 0)  # a repeated slot
    with pytest.raises(ProtocolError, match="not increasing"):
        decode_quantum(bytes(raw))


def test_slot_gaps_equal_the_reference() -> None:
    slots = np.cumsum(np.random.default_rng(5).integers(1, 3000, 10000))
    width, data = encode_slots(slots)
    assert width == 2
    assert data == np.diff(slots, prepend=0).astype("<u2").tobytes()
    assert encode_slots(np.zeros(0, np.int64)) == (1, b"")
