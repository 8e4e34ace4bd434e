"""Opus through the libopus PyAV bundles: speech survives, FEC recovers lost frames better
than concealment alone, bad packets are refused."""

from __future__ import annotations

import numpy as np
import pytest

from client.call.opus import FRAME_SAMPLES, Decoder, Encoder, OpusError, version
from tests.call.speech import spectra, spectral_correlation, speech_like

SPEECH = speech_like(4.0)


def encode_all(signal: np.ndarray) -> list[bytes]:
    encoder = Encoder()
    return [encoder.encode(signal[i:i + FRAME_SAMPLES])
            for i in range(0, signal.size - FRAME_SAMPLES + 1, FRAME_SAMPLES)]


def test_the_bundled_libopus_is_found() -> None:
    assert version().startswith("libopus 1.")


def test_speech_comes_out_alike() -> None:
    packets = encode_all(SPEECH)
    assert 20 < np.mean([len(p) for p in packets]) < 120  # about 24 kbit/s
    decoder = Decoder()
    out = np.concatenate([decoder.decode(p) for p in packets])
    assert spectral_correlation(SPEECH, out) >= 0.9


def _decode_with_losses(packets: list[bytes], lost: set[int], use_fec: bool) -> np.ndarray:
    decoder = Decoder()
    out = []
    for i, packet in enumerate(packets):
        if i in lost:
            after = packets[i + 1] if i + 1 < len(packets) and i + 1 not in lost else None
            out.append(decoder.recover(after) if use_fec and after else decoder.conceal())
        else:
            out.append(decoder.decode(packet))
    return np.concatenate(out)


def test_fec_recovers_lost_frames_better_than_concealment() -> None:
    packets = encode_all(SPEECH)
    lost = set(range(7, len(packets), 10))  # 10 % loss, never two in a row
    clean = _decode_with_losses(packets, set(), use_fec=False)
    fec = _decode_with_losses(packets, lost, use_fec=True)
    concealed = _decode_with_losses(packets, lost, use_fec=False)

    def error_in_lost_frames(decoded: np.ndarray) -> float:
        a, b = spectra(clean), spectra(decoded)
        rows = sorted(lost)
        return float(np.mean(np.abs(a[rows] - b[rows])))

    assert error_in_lost_frames(fec) < 0.9 * error_in_lost_frames(concealed)
    assert spectral_correlation(SPEECH, fec) >= 0.85


def test_bad_input_is_refused_with_a_reason() -> None:
    encoder, decoder = Encoder(), Decoder()
    with pytest.raises(ValueError, match="960 samples"):
        encoder.encode(np.zeros(480, np.int16))
    with pytest.raises(ValueError, match="conceal"):
        decoder.decode(b"")
    with pytest.raises(OpusError, match="corrupted"):
        decoder.decode(b"\xff\xff\xff")
    with pytest.raises(OpusError, match="20 ms"):
        decoder.decode(b"\x00")  # a valid 10 ms packet: not what calls send
    assert decoder.decode(encoder.encode(np.zeros(FRAME_SAMPLES, np.int16))).size == 960
