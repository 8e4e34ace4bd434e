"""Opus for calls: 48 kHz mono, 20 ms frames, VoIP mode, in-band FEC, loss concealment.

libopus comes with PyAV's wheels (``av.libs/libopus-*.so``), so nothing else is installed.
PyAV's own codec API encodes and decodes whole packets but cannot ask the decoder for the
two things a call needs when a packet is lost: *forward error correction* (decode the next
packet's low-bitrate copy of the lost frame, ``decode_fec=1``) and *concealment* (decode
"no packet", which extrapolates from the decoder's history). So this module speaks to the
same libopus through ``ctypes``, for the encoder and the decoder alike (one way into the
library), and keeps that interface fenced here: fixed frame size, checked return codes.
PyAV itself reads and writes audio files (client.call.audio).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
from functools import cache

import numpy as np

SAMPLE_RATE = 48_000
CHANNELS = 1
FRAME_SAMPLES = 960  # 20 ms
MAX_PACKET = 1276  # the largest Opus frame (RFC 6716 §3.2.1)
_APPLICATION_VOIP = 2048
_SET_BITRATE = 4002
_SET_INBAND_FEC = 4012
_SET_PACKET_LOSS_PERC = 4014
_SET_COMPLEXITY = 4010
_GET_LOOKAHEAD = 4027


class OpusError(RuntimeError):
    """libopus is missing or refused something (its own message)."""


@cache
def _library() -> ctypes.CDLL:
    """libopus: the copy PyAV's wheel bundles, else the system's."""
    candidates: list[str] = []
    try:
        import av

        libs = os.path.join(os.path.dirname(os.path.dirname(av.__file__)), "av.libs")
        candidates += sorted(glob.glob(os.path.join(libs, "libopus*.so*")))
    except ImportError:
        pass
    system = ctypes.util.find_library("opus")
    if system:
        candidates.append(system)
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        _declare(lib)
        return lib
    raise OpusError("libopus not found: install PyAV ('pip install av', its wheels bundle "
                    "libopus) or the system's libopus")


def _declare(lib: ctypes.CDLL) -> None:
    c_int, ptr = ctypes.c_int, ctypes.c_void_p
    lib.opus_strerror.restype = ctypes.c_char_p
    lib.opus_strerror.argtypes = [c_int]
    lib.opus_get_version_string.restype = ctypes.c_char_p
    lib.opus_encoder_create.restype = ptr
    lib.opus_encoder_create.argtypes = [ctypes.c_int32, c_int, c_int, ctypes.POINTER(c_int)]
    lib.opus_encoder_destroy.argtypes = [ptr]
    lib.opus_encode.restype = ctypes.c_int32
    lib.opus_encode.argtypes = [ptr, ctypes.POINTER(ctypes.c_int16), c_int,
                                ctypes.c_char_p, ctypes.c_int32]
    lib.opus_decoder_create.restype = ptr
    lib.opus_decoder_create.argtypes = [ctypes.c_int32, c_int, ctypes.POINTER(c_int)]
    lib.opus_decoder_destroy.argtypes = [ptr]
    lib.opus_decode.restype = c_int
    lib.opus_decode.argtypes = [ptr, ctypes.c_char_p, ctypes.c_int32,
                                ctypes.POINTER(ctypes.c_int16), c_int, c_int]
    # opus_encoder_ctl is variadic: its arguments are passed as C ints, unchecked.


def version() -> str:
    return str(_library().opus_get_version_string().decode())


def _check(code: int, what: str) -> int:
    if code < 0:
        message = _library().opus_strerror(code).decode()
        raise OpusError(f"{what}: {message}")
    return code


def _pcm_pointer(pcm: np.ndarray) -> ctypes._Pointer[ctypes.c_int16]:
    return pcm.ctypes.data_as(ctypes.POINTER(ctypes.c_int16))


class Encoder:
    """20 ms frames of 16-bit mono PCM in, Opus packets out (VoIP, in-band FEC on)."""

    def __init__(self, bitrate: int = 24_000, expected_loss_percent: int = 10,
                 complexity: int = 5) -> None:
        lib = _library()
        error = ctypes.c_int(0)
        self._state = lib.opus_encoder_create(SAMPLE_RATE, CHANNELS, _APPLICATION_VOIP,
                                              ctypes.byref(error))
        _check(error.value, "opus encoder")
        if not self._state:
            raise OpusError("opus encoder: not created")
        for request, value in ((_SET_BITRATE, bitrate), (_SET_INBAND_FEC, 1),
                               (_SET_PACKET_LOSS_PERC, expected_loss_percent),
                               (_SET_COMPLEXITY, complexity)):
            _check(lib.opus_encoder_ctl(ctypes.c_void_p(self._state), ctypes.c_int(request),
                                        ctypes.c_int(value)), f"opus encoder setting {request}")
        self._out = ctypes.create_string_buffer(MAX_PACKET)

    def encode(self, pcm: np.ndarray) -> bytes:
        """One packet for one 20 ms frame (``FRAME_SAMPLES`` int16 samples)."""
        frame = np.ascontiguousarray(pcm, dtype=np.int16).reshape(-1)
        if frame.size != FRAME_SAMPLES:
            raise ValueError(f"a frame is {FRAME_SAMPLES} samples, not {frame.size}")
        size = _check(_library().opus_encode(self._state, _pcm_pointer(frame), FRAME_SAMPLES,
                                             self._out, MAX_PACKET), "opus encode")
        return self._out.raw[:size]

    def close(self) -> None:
        if self._state:
            _library().opus_encoder_destroy(self._state)
            self._state = None

    def __del__(self) -> None:
        self.close()


class Decoder:
    """Opus packets in, 20 ms frames of 16-bit mono PCM out; FEC and concealment for gaps."""

    def __init__(self) -> None:
        lib = _library()
        error = ctypes.c_int(0)
        self._state = lib.opus_decoder_create(SAMPLE_RATE, CHANNELS, ctypes.byref(error))
        _check(error.value, "opus decoder")
        if not self._state:
            raise OpusError("opus decoder: not created")

    def _decode(self, packet: bytes | None, fec: bool) -> np.ndarray:
        out = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        data, size = (packet, len(packet)) if packet else (None, 0)
        got = _check(_library().opus_decode(self._state, data, size, _pcm_pointer(out),
                                            FRAME_SAMPLES, int(fec)), "opus decode")
        if got != FRAME_SAMPLES:
            raise OpusError(f"opus decode: {got} samples, expected {FRAME_SAMPLES} (the "
                            "sender must use 20 ms frames)")
        return out

    def decode(self, packet: bytes) -> np.ndarray:
        """The frame ``packet`` carries."""
        if not packet:
            raise ValueError("an empty packet: use conceal() for a lost one")
        return self._decode(packet, fec=False)

    def recover(self, next_packet: bytes) -> np.ndarray:
        """The *lost* frame before ``next_packet``, from the FEC copy inside it (concealment
        when it carries none); decode ``next_packet`` itself afterwards as usual."""
        return self._decode(next_packet, fec=True)

    def conceal(self) -> np.ndarray:
        """A frame that never came and nothing to recover it from: extrapolated."""
        return self._decode(None, fec=False)

    def close(self) -> None:
        if self._state:
            _library().opus_decoder_destroy(self._state)
            self._state = None

    def __del__(self) -> None:
        self.close()


__all__ = ["CHANNELS", "FRAME_SAMPLES", "SAMPLE_RATE", "Decoder", "Encoder", "OpusError",
           "version"]
