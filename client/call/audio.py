"""Where a call's sound comes from and goes to: 20 ms frames of 48 kHz mono 16-bit PCM.

A :class:`Source` gives frames until it ends (None); a :class:`Sink` takes them. Kinds:
a tone, silence, an audio file (any format PyAV reads, resampled to 48 kHz mono; written
as WAV), and the sound device through ``sounddevice`` (the optional extra
``qsecret[audio]``; it needs PortAudio, Debian ``libportaudio2``). Without a sound device
the error says so and points at ``--in``/``--out``.
"""

from __future__ import annotations

import math
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from .opus import CHANNELS, FRAME_SAMPLES, SAMPLE_RATE

NO_DEVICE_HINT = "use --in FILE.wav or --tone HZ for the microphone, --out FILE.wav for the speaker"


class AudioError(RuntimeError):
    """A source or sink that cannot be used; the message says what to do instead."""


class Source(Protocol):
    def read(self) -> np.ndarray | None:
        """The next 20 ms (FRAME_SAMPLES int16 samples), or None at the end."""

    def close(self) -> None: ...


class Sink(Protocol):
    def write(self, frame: np.ndarray) -> None: ...

    def close(self) -> None: ...


class ToneSource:
    """A sine tone of ``hz`` for ``seconds`` (None: for ever), at ``level`` of full scale."""

    def __init__(self, hz: float, seconds: float | None = None, level: float = 0.3) -> None:
        if not 20 <= hz <= SAMPLE_RATE / 2:
            raise AudioError(f"a tone of {hz} Hz cannot be played at 48 kHz (20-24000 Hz)")
        self.hz, self.level = hz, level
        self._frames = None if seconds is None else math.ceil(seconds * SAMPLE_RATE
                                                              / FRAME_SAMPLES)
        self._n = 0

    def read(self) -> np.ndarray | None:
        if self._frames is not None and self._n >= self._frames:
            return None
        t = (np.arange(FRAME_SAMPLES) + self._n * FRAME_SAMPLES) / SAMPLE_RATE
        self._n += 1
        return (np.sin(2 * np.pi * self.hz * t) * self.level * 32767).astype(np.int16)

    def close(self) -> None:
        pass


class SilenceSource:
    def __init__(self, seconds: float | None = None) -> None:
        self._left = None if seconds is None else math.ceil(seconds * SAMPLE_RATE
                                                            / FRAME_SAMPLES)

    def read(self) -> np.ndarray | None:
        if self._left is not None:
            if self._left <= 0:
                return None
            self._left -= 1
        return np.zeros(FRAME_SAMPLES, dtype=np.int16)

    def close(self) -> None:
        pass


def read_audio_file(path: Path) -> np.ndarray:
    """The whole file as 48 kHz mono int16 samples (any format and rate PyAV reads)."""
    import av

    try:
        container = av.open(str(path))
    except (OSError, av.FFmpegError) as exc:
        raise AudioError(f"cannot read {path}: {exc}") from None
    with container:
        streams = container.streams.audio
        if not streams:
            raise AudioError(f"{path} has no audio")
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        chunks = []
        try:
            for frame in container.decode(streams[0]):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.FFmpegError as exc:
            raise AudioError(f"{path}: damaged audio ({exc})") from None
    return np.concatenate(chunks).astype(np.int16) if chunks else np.zeros(0, np.int16)


class FileSource:
    """An audio file, frame by frame (the last frame padded with silence)."""

    def __init__(self, path: Path) -> None:
        self.samples = read_audio_file(path)
        self._pos = 0

    def read(self) -> np.ndarray | None:
        if self._pos >= self.samples.size:
            return None
        frame = self.samples[self._pos:self._pos + FRAME_SAMPLES]
        self._pos += FRAME_SAMPLES
        if frame.size < FRAME_SAMPLES:
            frame = np.concatenate([frame, np.zeros(FRAME_SAMPLES - frame.size, np.int16)])
        return frame

    def close(self) -> None:
        pass


class WavSink:
    """Frames into a 48 kHz mono 16-bit WAV file."""

    def __init__(self, path: Path) -> None:
        try:
            self._file = open(path, "wb")
        except OSError as exc:
            raise AudioError(f"cannot write {path}: {exc.strerror or exc}") from None
        self._wav = wave.open(self._file, "wb")
        self._wav.setnchannels(CHANNELS)
        self._wav.setsampwidth(2)
        self._wav.setframerate(SAMPLE_RATE)
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        self._wav.writeframes(np.ascontiguousarray(frame, dtype="<i2").tobytes())
        self.frames += 1

    def close(self) -> None:
        self._wav.close()
        self._file.close()


def frames_of(source: Source) -> Iterator[np.ndarray]:
    while (frame := source.read()) is not None:
        yield frame


def _sounddevice():  # type: ignore[no-untyped-def]
    try:
        import sounddevice
    except ImportError as exc:  # not installed, or PortAudio missing (an OSError inside)
        raise AudioError(f"no sound device support ({exc}); install qsecret[audio] and "
                         f"PortAudio (Debian: libportaudio2), or {NO_DEVICE_HINT}") from None
    except OSError as exc:
        raise AudioError(f"PortAudio is missing ({exc}); install it (Debian: "
                         f"libportaudio2), or {NO_DEVICE_HINT}") from None
    return sounddevice


def _stream(kind: str):  # type: ignore[no-untyped-def]
    sd = _sounddevice()
    cls = sd.RawInputStream if kind == "input" else sd.RawOutputStream
    try:
        stream = cls(samplerate=SAMPLE_RATE, channels=CHANNELS, dtype="int16",
                     blocksize=FRAME_SAMPLES)
        stream.start()
    except Exception as exc:  # sounddevice.PortAudioError and friends: no usable device
        raise AudioError(f"no {kind} sound device here ({exc}); {NO_DEVICE_HINT}") from None
    return stream


class MicrophoneSource:
    """The default input device (blocking reads of 20 ms)."""

    blocking = True  # read on a worker thread, never on the event loop

    def __init__(self) -> None:
        self._stream = _stream("input")

    def read(self) -> np.ndarray | None:
        data, _overflowed = self._stream.read(FRAME_SAMPLES)
        return np.frombuffer(bytes(data), dtype=np.int16).copy()

    def close(self) -> None:
        self._stream.stop()
        self._stream.close()


class SpeakerSink:
    """The default output device."""

    blocking = True

    def __init__(self) -> None:
        self._stream = _stream("output")

    def write(self, frame: np.ndarray) -> None:
        self._stream.write(np.ascontiguousarray(frame, dtype=np.int16).tobytes())

    def close(self) -> None:
        self._stream.stop()
        self._stream.close()


__all__ = ["AudioError", "FileSource", "MicrophoneSource", "SilenceSource", "Sink", "Source",
           "SpeakerSink", "ToneSource", "WavSink", "frames_of", "read_audio_file"]
