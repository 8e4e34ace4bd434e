"""Speech-like test signals and comparisons that survive a codec (short-time spectra): one
aligned once (a codec alone), one aligned per half second (a whole call, whose jitter buffer
may add or drop 20 ms here and there)."""

from __future__ import annotations

import numpy as np

RATE = 48_000


def speech_like(seconds: float, seed: int = 1) -> np.ndarray:
    """Voiced sound: a wandering pitch (110-190 Hz) with 20 harmonics under a syllable-rate
    envelope, plus a little noise; int16 at 48 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = 150 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 21))
    envelope = 0.2 + 0.8 * np.sin(2 * np.pi * 3.0 * t) ** 2
    signal = voiced * envelope + 0.02 * rng.standard_normal(t.size)
    return (signal / np.abs(signal).max() * 12_000).astype(np.int16)


def align(reference: np.ndarray, received: np.ndarray, max_lag: int = 9600) -> int:
    """The delay (samples) of ``received`` against ``reference``: the peak of their
    cross-correlation (by FFT) over the first second, lags 0 .. max_lag."""
    a = reference[:RATE].astype(float)
    b = received[:RATE + max_lag].astype(float)
    size = 1 << (a.size + b.size).bit_length()
    xcorr = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)
    return int(np.argmax(xcorr[:max_lag]))


BAND_HZ = 7000  # wideband speech: what Opus carries at a call's 24 kbit/s


def spectra(signal: np.ndarray, frame: int = 960) -> np.ndarray:
    """Log-magnitude spectra of 20 ms Hann-windowed frames up to BAND_HZ (a row per frame)."""
    count = signal.size // frame
    frames = signal[: count * frame].astype(float).reshape(count, frame) * np.hanning(frame)
    bins = BAND_HZ * frame // RATE
    return np.log10(np.abs(np.fft.rfft(frames, axis=1))[:, :bins] + 1.0)


def spectral_correlation(reference: np.ndarray, received: np.ndarray) -> float:
    """Correlation of the two signals' short-time spectra, after aligning them."""
    lag = align(reference, received)
    n = min(reference.size, received.size - lag)
    a, b = spectra(reference[:n]), spectra(received[lag:lag + n])
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def speech_with_pauses(seconds: float, seed: int = 7) -> np.ndarray:
    """Syllables of voiced sound (a gliding pitch, harmonics shaped by two formants, a
    smooth envelope) with pauses between them: what a codec for speech sees."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * RATE))
    pos = int(0.1 * RATE)
    while pos < out.size - int(0.3 * RATE):
        length = int(rng.uniform(0.12, 0.3) * RATE)
        t = np.arange(length) / RATE
        f0 = rng.uniform(100, 180) * (1 + 0.15 * t / t[-1] * rng.choice([-1, 1]))
        phase = 2 * np.pi * np.cumsum(f0) / RATE
        formants = (rng.uniform(400, 900), rng.uniform(1100, 2300))
        syllable = np.zeros(length)
        for k in range(1, 30):
            freq = k * f0.mean()
            if freq > 7000:
                break
            gain = sum(np.exp(-((freq - f) / 180) ** 2) for f in formants) + 0.05 / k
            syllable += gain * np.sin(k * phase)
        syllable *= np.hanning(length)
        out[pos:pos + length] += syllable
        pos += length + int(rng.uniform(0.05, 0.25) * RATE)
    return (out / np.abs(out).max() * 0.5 * 32767).astype(np.int16)


def _linear_spectra(x: np.ndarray, size: int = 960, hop: int = 480) -> np.ndarray:
    """Magnitude spectra (to 8 kHz) of 20 ms Hann frames overlapping by half."""
    frames = [x[i:i + size] * np.hanning(size) for i in range(0, x.size - size + 1, hop)]
    return np.abs(np.fft.rfft(np.array(frames), axis=1))[:, :size * 8000 // RATE]


def segment_aligned_similarity(sent: np.ndarray, heard: np.ndarray, segment_s: float = 0.5,
                               search_s: float = 0.12) -> float:
    """Correlation of the short-time spectra of ``sent`` and the part of ``heard`` that
    plays it. The whole is aligned by cross-correlation first; each half second is then
    aligned again within ``search_s`` (a jitter buffer may add or drop 20 ms here and
    there, shifting what follows)."""
    n = 1 << int(np.ceil(np.log2(sent.size + heard.size)))
    cross = np.fft.irfft(np.fft.rfft(heard, n) * np.conj(np.fft.rfft(sent, n)), n)
    lag = int(np.argmax(cross[:heard.size]))
    seg, search = int(segment_s * RATE), int(search_s * RATE)
    pairs_sent, pairs_heard = [], []
    for start in range(0, sent.size - seg + 1, seg):
        piece = sent[start:start + seg]
        if np.abs(piece).max() < 1:  # silence: nothing to align on
            continue
        lo = max(0, lag + start - search)
        window = heard[lo:lag + start + seg + search]
        if window.size < seg:
            break
        scores = np.correlate(window, piece, mode="valid")
        best = lo + int(np.argmax(scores))
        pairs_sent.append(_linear_spectra(piece))
        pairs_heard.append(_linear_spectra(heard[best:best + seg]))
    assert pairs_sent, "nothing of the sent sound was heard"
    a, b = np.concatenate(pairs_sent).ravel(), np.concatenate(pairs_heard).ravel()
    return float(np.corrcoef(a, b)[0, 1])
