"""One direction of a call's audio, sans-I/O: PCM -> Opus -> SFrame, and back.

The sender numbers each 20 ms frame and seals ``seq (4) || echo seq (4) || echo hold (2) ||
opus packet`` with SFrame under its current KID; a rekey starts a new KID (a fresh counter)
and the number goes on. The echo (like RTCP's LSR/DLSR) names the newest frame this side
received from the other and how long, in ms, it held it before this frame went out; the other
side, which noted when it sent that frame, gets the media round trip: now - sent - hold
(both terms on its own clock, so the two clocks need not agree). Echoes ride inside the
SFrame seal: a relay cannot fake them.
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

_HEAD = struct.Struct(">IIH")  # seq, echoed seq, hold in ms
NO_ECHO = 0xFFFF_FFFF
MAX_HOLD_MS = 0xFFFF
SENT_TIMES_KEPT = 256  # frames whose send time is kept for echoes (5 s)
RTT_GAIN = 1 / 8  # the smoothing of RFC 6298's SRTT
SILENCE = np.zeros(FRAME_SAMPLES, dtype=np.int16)


@dataclass(frozen=True)
class Echo:
    """The newest frame received from the other side and when it arrived (our clock)."""

    seq: int
    arrival: float


class MediaSender:
    """Encodes and seals the frames of one direction."""

    def __init__(self, base_key: bytes, kid: int, *, bitrate: int = 24_000) -> None:
        self._encoder = Encoder(bitrate=bitrate)
        self._sframe = Sender(base_key, kid)
        self.seq = 0
        self.rekeys = 0
        self._sent_at: dict[int, float] = {}
        self.round_trip_s: float | None = None  # smoothed media round trip
        self.last_round_trip_s: float | None = None

    @property
    def kid(self) -> int:
        return self._sframe.kid

    def rekey(self, base_key: bytes, kid: int) -> None:
        """Seal from now on under ``kid`` (the receiver must hold it before it gets these)."""
        if kid == self._sframe.kid:
            raise ValueError("a rekey needs a new KID")
        self._sframe = Sender(base_key, kid)
        self.rekeys += 1

    def frame(self, pcm: np.ndarray, now: float = 0.0, echo: Echo | None = None) -> bytes:
        """One sealed media frame for 20 ms of sound, sent at ``now`` (our clock), echoing
        the newest frame received from the other side (None: none yet)."""
        packet = self._encoder.encode(pcm)
        if echo is None:
            head = _HEAD.pack(self.seq, NO_ECHO, 0)
        else:
            hold_ms = min(MAX_HOLD_MS, max(0, round((now - echo.arrival) * 1000)))
            head = _HEAD.pack(self.seq, echo.seq, hold_ms)
        sealed = self._sframe.protect(head + packet)
        self._sent_at[self.seq] = now
        if len(self._sent_at) > SENT_TIMES_KEPT:
            del self._sent_at[next(iter(self._sent_at))]  # the oldest (insertion order)
        self.seq = (self.seq + 1) % (1 << 32)
        return sealed

    def echoed(self, seq: int, hold_s: float, arrival: float) -> float | None:
        """The other side echoed our frame ``seq`` after holding it ``hold_s``, in a frame
        that arrived at ``arrival``: one round-trip sample (None: not a frame we know)."""
        sent = self._sent_at.get(seq)
        if sent is None:
            return None
        sample = max(0.0, arrival - sent - hold_s)
        self.last_round_trip_s = sample
        if self.round_trip_s is None:
            self.round_trip_s = sample
        else:
            self.round_trip_s += RTT_GAIN * (sample - self.round_trip_s)
        return sample


def _newer(seq: int, than: int) -> bool:
    """Whether ``seq`` comes after ``than`` (sequence numbers wrap at 2**32)."""
    return 0 < (seq - than) % (1 << 32) < 1 << 31


@dataclass
class ReceiveStats:
    opened: int
    refused: dict[str, int]
    jitter: Stats


MAX_WAIT_RUNS = 256  # kept for the statistics; later ones are only counted (jitter.waits)


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
        self.newest: Echo | None = None  # the newest frame opened, to echo back
        self.peer_echo: tuple[int, float] | None = None  # the last frame's echo: seq, hold s
        self.played = 0  # playouts so far: the sink's frame index of the next one
        # Where playout waited for a frame not yet delivered (delay grown by 20 ms, nothing
        # of the sender's sound missing), as [first playout index, count] runs: telling a
        # late delivery (a starved process or path) from a lost frame in a recording.
        self.waits: list[list[int]] = []

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
        if len(plaintext) <= _HEAD.size:
            self._sframe.refused["malformed"] += 1
            return False
        seq, echo_seq, hold_ms = _HEAD.unpack_from(plaintext)
        self.peer_echo = None if echo_seq == NO_ECHO else (echo_seq, hold_ms / 1000)
        if self.newest is None or _newer(seq, self.newest.seq):
            self.newest = Echo(seq, arrival)
        return self.jitter.push(seq, seq * FRAME_S, arrival, plaintext[_HEAD.size:])

    def play(self, behind_s: float = 0.0) -> np.ndarray:
        """The next 20 ms for the speaker (``behind_s``: how late the audio clock is)."""
        playout = self.jitter.pull(behind_s)
        index, self.played = self.played, self.played + 1
        if playout.kind is Kind.WAIT and self._started:
            if self.waits and sum(self.waits[-1]) == index:
                self.waits[-1][1] += 1
            elif len(self.waits) < MAX_WAIT_RUNS:
                self.waits.append([index, 1])
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


__all__ = ["Echo", "MediaReceiver", "MediaSender", "ReceiveStats"]
