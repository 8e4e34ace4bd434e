"""Progress of a transfer: bytes done, rate and ETA, for the CLI (rich) and the TUI.

The meter is pure: the clock is injected, so tests and replays are deterministic. The rate is
the slope over a sliding window of recent samples (default 5 s), which follows changes in link
speed without jumping on every chunk.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

WINDOW_SECONDS = 5.0


@dataclass(frozen=True)
class Progress:
    """A snapshot a progress bar can render."""

    done_bytes: int
    total_bytes: int
    files_done: int
    files_total: int
    rate_bytes_per_s: float
    eta_seconds: float | None

    @property
    def fraction(self) -> float:
        return 1.0 if self.total_bytes == 0 else self.done_bytes / self.total_bytes


class ProgressMeter:
    def __init__(self, total_bytes: int, files_total: int,
                 clock: Callable[[], float] = time.monotonic,
                 window_seconds: float = WINDOW_SECONDS) -> None:
        self.total_bytes = total_bytes
        self.files_total = files_total
        self.done_bytes = 0
        self.files_done = 0
        self._clock = clock
        self._window = window_seconds
        self._samples: deque[tuple[float, int]] = deque()

    def set_done(self, done_bytes: int, files_done: int | None = None) -> Progress:
        """Record the absolute amount done (resumes may move it backwards)."""
        now = self._clock()
        if done_bytes < self.done_bytes:
            self._samples.clear()
        self.done_bytes = done_bytes
        if files_done is not None:
            self.files_done = files_done
        self._samples.append((now, done_bytes))
        while len(self._samples) > 2 and now - self._samples[0][0] > self._window:
            self._samples.popleft()
        return self.snapshot()

    def add(self, count: int) -> Progress:
        return self.set_done(self.done_bytes + count)

    def snapshot(self) -> Progress:
        rate = 0.0
        if len(self._samples) >= 2:
            (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
            if t1 > t0:
                rate = (b1 - b0) / (t1 - t0)
        remaining = self.total_bytes - self.done_bytes
        if remaining <= 0:
            eta: float | None = 0.0
        else:
            eta = remaining / rate if rate > 0 else None
        return Progress(self.done_bytes, self.total_bytes, self.files_done, self.files_total,
                        rate, eta)
