"""One direction of a call's audio, sans-I/O: PCM -> Opus -> SFrame, and back.

The sender numbers each 20 ms frame and seals ``seq (4 bytes) || opus packet`` with SFrame
under its current KID; a rekey starts a new KID (a fresh counter) and the number goes on.
The receiver opens frames under the KIDs it holds (an old one stays for a short grace after
a rekey, then is retired), hands them to the jitter buffer, and every 20 ms gives the
speaker a frame: decoded, recovered from the next frame's FEC, or concealed. What it
refuses (tampered, replayed, unknown KID) is counted and never played.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from .jitter import FRAME_S, JitterBuffer, Kind, Stats
from .opus import FRAME_SAMPLES, Decoder, Encoder, OpusError
from .sframe import Receiver, Sender, SFrameError

_SEQ = struct.Struct(">I")
SILENCE = np.zeros(FRAME_SAMPLES, dtype=np.int16)


class MediaSender:
    """Encodes and seals the frames of one direction."""

    def __init__(self, base_key: bytes, kid: int, *, bitrate: int = 24_000) -> None:
        self._encoder = Encoder(bitrate=bitrate)
        self._sframe = Sender(base_key, kid)
        self.seq = 0
        self.rekeys = 0

    @property
    def kid(self) -> int:
        return self._sframe.kid

    def rekey(self, base_key: bytes, kid: int) -> None:
        """Seal from now on under ``kid`` (the receiver must hold it before it gets these)."""
        if kid == self._sframe.kid:
            raise ValueError("a rekey needs a new KID")
        self._sframe = Sender(base_key, kid)
        self.rekeys += 1

    def frame(self, pcm: np.ndarray) -> bytes:
        """One sealed media frame for 20 ms of sound."""
        packet = self._encoder.encode(pcm)
        sealed = self._sframe.protect(_SEQ.pack(self.seq) + packet)
        self.seq = (self.seq + 1) % (1 << 32)
        return sealed


@dataclass
class ReceiveStats:
    opened: int
    refused: dict[str, int]
    jitter: Stats


class MediaReceiver:
    """Opens, orders and decodes the frames of one direction; one playout per 20 ms."""

    def __init__(self, base_key: bytes, kid: int, jitter: JitterBuffer | None = None) -> None:
        self._sframe = Receiver()
        self._sframe.add_key(base_key, kid)
        self._decoder = Decoder()
        self.jitter = jitter or JitterBuffer()
        self._started = False
        self.undecodable = 0
        self.last_kid: int | None = None  # the KID of the last frame that opened

    def add_key(self, base_key: bytes, kid: int) -> None:
        self._sframe.add_key(base_key, kid)

    def retire(self, kid: int) -> None:
        self._sframe.retire(kid)

    @property
    def kids(self) -> tuple[int, ...]:
        return self._sframe.kids

    def receive(self, data: bytes, arrival: float) -> bool:
        """A sealed frame arrived at ``arrival`` (seconds, our clock). False: refused or
        dropped (counted); nothing refused ever reaches the speaker."""
        try:
            kid, _ctr, plaintext = self._sframe.unprotect(data)
        except SFrameError:
            return False
        self.last_kid = kid
        if len(plaintext) <= _SEQ.size:
            self._sframe.refused["malformed"] += 1
            return False
        (seq,) = _SEQ.unpack_from(plaintext)
        return self.jitter.push(seq, seq * FRAME_S, arrival, plaintext[_SEQ.size:])

    def play(self) -> np.ndarray:
        """The next 20 ms for the speaker."""
        playout = self.jitter.pull()
        try:
            if playout.kind is Kind.FRAME:
                self._started = True
                return self._decoder.decode(playout.payload)  # type: ignore[arg-type]
            if playout.kind is Kind.FEC:
                return self._decoder.recover(playout.payload)  # type: ignore[arg-type]
        except OpusError:  # authentic but undecodable (a peer's bug): concealed, counted
            self.undecodable += 1
            return self._decoder.conceal()
        if playout.kind is Kind.CONCEAL or (playout.kind is Kind.WAIT and self._started):
            return self._decoder.conceal()
        return SILENCE.copy()

    @property
    def stats(self) -> ReceiveStats:
        return ReceiveStats(self._sframe.opened, dict(self._sframe.refused), self.jitter.stats)


__all__ = ["MediaReceiver", "MediaSender", "ReceiveStats"]
