"""Audio sources and sinks: tones, silence, files in any format PyAV reads, WAV out."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from client.call.audio import (
    AudioError,
    FileSource,
    MicrophoneSource,
    SilenceSource,
    ToneSource,
    WavSink,
    frames_of,
    read_audio_file,
)
from client.call.opus import FRAME_SAMPLES


def test_a_tone_has_its_pitch_and_length() -> None:
    frames = list(frames_of(ToneSource(440.0, seconds=1.0)))
    assert len(frames) == 50 and all(f.size == FRAME_SAMPLES for f in frames)
    spectrum = np.abs(np.fft.rfft(np.concatenate(frames).astype(float)))
    assert round(float(np.argmax(spectrum))) == 440  # 1 Hz bins over one second
    with pytest.raises(AudioError):
        ToneSource(5.0)


def test_silence() -> None:
    frames = list(frames_of(SilenceSource(0.1)))
    assert len(frames) == 5 and not any(f.any() for f in frames)


def test_wav_out_then_in(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    sink = WavSink(path)
    frames = list(frames_of(ToneSource(300.0, seconds=0.5)))
    for frame in frames:
        sink.write(frame)
    sink.close()
    with wave.open(str(path)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (48000, 1, 2)
    back = list(frames_of(FileSource(path)))
    assert np.array_equal(np.concatenate(back), np.concatenate(frames))


def test_other_rates_and_stereo_are_resampled_to_48k_mono(tmp_path: Path) -> None:
    path = tmp_path / "cd.wav"
    t = np.arange(44_100) / 44_100
    left = (np.sin(2 * np.pi * 500 * t) * 10_000).astype(np.int16)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(44_100)
        wav.writeframes(np.column_stack([left, left]).tobytes())
    samples = read_audio_file(path)
    assert abs(samples.size - 48_000) < 100
    spectrum = np.abs(np.fft.rfft(samples[:48_000].astype(float)))
    assert abs(int(np.argmax(spectrum)) - 500) <= 1


def test_unreadable_files_say_so(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="cannot read"):
        read_audio_file(tmp_path / "missing.wav")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    with pytest.raises(AudioError):
        read_audio_file(junk)
    with pytest.raises(AudioError, match="cannot write"):
        WavSink(tmp_path / "no" / "such" / "dir.wav")


def test_without_a_sound_device_the_error_points_at_files() -> None:
    try:
        source = MicrophoneSource()
    except AudioError as exc:
        assert "--in" in str(exc)
    else:  # a machine with a microphone: it works
        assert source.read() is not None
        source.close()
