"""The receiving side's jitter buffer for 20 ms audio frames (sans-I/O).

Frames arrive out of order, late, twice or not at all; the speaker wants one frame every
20 ms. The buffer holds arrived frames by sequence number and the audio clock *pulls* one
playout decision per 20 ms (:meth:`JitterBuffer.pull`): a frame, or a gap the decoder fills
by concealment (with Opus in-band FEC from the next frame when that one has arrived).

Delay adapts between ``min_delay`` and ``max_delay`` (40-200 ms): the target is the
interarrival jitter of RFC 3550 §6.4.1 (``J += (|D| - J) / 16``, D the change in transit
time between two frames) times ``JITTER_MULTIPLE``, plus one frame. When more is buffered
than the target allows, a frame is skipped (the delay shrinks by 20 ms); when a frame is due
and nothing has arrived yet, playout waits one frame instead of declaring it lost (the
delay grows by 20 ms). A frame that arrives after its turn was played is dropped as late.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

FRAME_S = 0.020
JITTER_MULTIPLE = 3.0
SEQ_SPAN = 1 << 32  # sequence numbers are 32-bit and wrap


class Kind(Enum):
    FRAME = "frame"  # play ``payload``
    FEC = "fec"  # the frame was lost: decode ``payload`` (the next frame) with FEC
    CONCEAL = "conceal"  # lost, nothing to recover from: packet-loss concealment
    WAIT = "wait"  # not started, or the delay grows: play silence / concealment, no loss


@dataclass(frozen=True)
class Playout:
    """What to play for this 20 ms: ``seq`` is the frame it stands for (None for WAIT)."""

    kind: Kind
    seq: int | None = None
    payload: bytes | None = None


@dataclass
class Stats:
    received: int = 0
    duplicates: int = 0
    late: int = 0  # arrived after their turn: dropped
    lost: int = 0  # their turn came and they had not arrived (FEC or concealment played)
    recovered: int = 0  # of the lost, played from the next frame's FEC
    skipped: int = 0  # dropped to shrink the delay
    waits: int = 0  # 20 ms of delay added
    jitter_s: float = 0.0  # RFC 3550 interarrival jitter
    target_s: float = 0.0  # the delay aimed at
    delay_s: float = 0.0  # what is buffered ahead of playout now
    played_frames: int = 0
    resyncs: int = 0  # the sender jumped ahead (an outage): playout started again there

    @property
    def loss(self) -> float:
        """Fraction of the frames whose turn came that were not there."""
        due = self.lost + self.played_frames
        return self.lost / due if due else 0.0


def _ahead(a: int, b: int) -> int:
    """How far sequence number ``a`` is after ``b`` (negative: before), across the wrap."""
    return (a - b + SEQ_SPAN // 2) % SEQ_SPAN - SEQ_SPAN // 2


class JitterBuffer:
    """Reorders, times and thins 20 ms frames for playout; see the module docstring."""

    def __init__(self, min_delay: float = 0.040, max_delay: float = 0.200,
                 max_frames: int = 64) -> None:
        if not 0 < min_delay <= max_delay:
            raise ValueError("need 0 < min_delay <= max_delay")
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.max_frames = max_frames  # never hold more than this (a flood is dropped)
        self._frames: dict[int, bytes] = {}
        self._next: int | None = None  # the sequence number whose turn is next
        self._newest: int | None = None  # the furthest frame held (valid while any is held)
        self._transit: float | None = None
        self._started = False
        self.stats = Stats(target_s=min_delay)

    # ------------------------------------------------------------ arrivals

    def push(self, seq: int, media_time: float, arrival: float, payload: bytes) -> bool:
        """A frame arrived (``media_time``: the sender's clock for it, ``arrival``: ours,
        both in seconds). False when it is dropped (duplicate, late, or no room)."""
        seq %= SEQ_SPAN
        transit = arrival - media_time
        if self._transit is not None:
            d = abs(transit - self._transit)
            self.stats.jitter_s += (d - self.stats.jitter_s) / 16
        self._transit = transit
        self._retarget()
        if self._next is not None and _ahead(seq, self._next) < 0:
            self.stats.late += 1
            return False
        if seq in self._frames:
            self.stats.duplicates += 1
            return False
        if self._next is not None and _ahead(seq, self._next) >= self.max_frames:
            self._resync(seq)
        if len(self._frames) >= self.max_frames:
            return False  # full (only reachable with a sender far ahead of its clock)
        self._frames[seq] = payload
        if self._newest is None or len(self._frames) == 1 or _ahead(seq, self._newest) > 0:
            self._newest = seq
        self.stats.received += 1
        if self._next is None:
            self._next = seq
        elif not self._started and _ahead(seq, self._next) < 0:
            self._next = seq  # an earlier frame before playout began: start there
        self._measure()
        return True

    def _resync(self, seq: int) -> None:
        """Frames resume far ahead (an outage longer than the buffer): what was missed is
        lost, what is held is stale; buffer up to the target again from ``seq``."""
        assert self._next is not None
        self.stats.lost += _ahead(seq, self._next) - len(self._frames)
        self.stats.skipped += len(self._frames)
        self.stats.resyncs += 1
        self._frames.clear()
        self._newest = None
        self._next = seq
        self._started = False

    def _retarget(self) -> None:
        wanted = JITTER_MULTIPLE * self.stats.jitter_s + FRAME_S
        self.stats.target_s = min(self.max_delay, max(self.min_delay, wanted))

    def _buffered(self) -> float:
        """Playout time covered by what has arrived: from the next turn to the newest frame."""
        if self._next is None or not self._frames or self._newest is None:
            return 0.0
        return (_ahead(self._newest, self._next) + 1) * FRAME_S

    def _measure(self) -> None:
        self.stats.delay_s = self._buffered()

    # ------------------------------------------------------------ playout

    def pull(self, behind_s: float = 0.0) -> Playout:
        """What to play for the next 20 ms (called once per 20 ms by the audio clock).

        ``behind_s``: how late the clock is with this pull (it was not scheduled, and now
        pulls its missed turns back to back). The frames that arrived meanwhile are due,
        not surplus delay: they are played, not skipped. Skipping them would cut the speech
        each time the receiving process is starved, where the network had delayed nothing."""
        stats = self.stats
        if self._next is None:
            stats.waits += 1
            return Playout(Kind.WAIT)
        if not self._started:
            if self._buffered() < stats.target_s:
                stats.waits += 1
                return Playout(Kind.WAIT)
            self._started = True
        # Too much buffered: skip the oldest frame (20 ms less delay).
        surplus = self._buffered() - max(0.0, behind_s) - stats.target_s
        if surplus > 2 * FRAME_S and self._next in self._frames:
            del self._frames[self._next]
            self._advance()
            stats.skipped += 1
        seq = self._next
        payload = self._frames.pop(seq, None)
        if payload is not None:
            self._advance()
            stats.played_frames += 1
            self._measure()
            return Playout(Kind.FRAME, seq, payload)
        if not self._frames:
            # Nothing after it has arrived either: wait one frame rather than call it lost
            # (the path is slower than the target: the delay grows by 20 ms).
            stats.waits += 1
            return Playout(Kind.WAIT)
        self._advance()
        stats.lost += 1
        after = self._frames.get((seq + 1) % SEQ_SPAN)
        self._measure()
        if after is not None:
            stats.recovered += 1
            return Playout(Kind.FEC, seq, after)
        return Playout(Kind.CONCEAL, seq)

    def _advance(self) -> None:
        assert self._next is not None
        self._next = (self._next + 1) % SEQ_SPAN


__all__ = ["FRAME_S", "JitterBuffer", "Kind", "Playout", "Stats"]
