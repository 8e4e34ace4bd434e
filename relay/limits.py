"""Per-connection limits: a token bucket for the frame rate, strikes for abuse."""

from __future__ import annotations

import time
from collections import deque


class TokenBucket:
    """``rate`` frames per second sustained, bursts up to ``burst``."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float | None = None) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic() if now is None else now

    def take(self, now: float | None = None) -> bool:
        """Spend one token if there is one; say whether the frame may pass."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def delay(self, now: float | None = None) -> float:
        """Spend one token, borrowing if needed; return how long to wait until it was due."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0.0 else -self.tokens / self.rate


class Strikes:
    """Counts bad frames in a sliding window; ``limit`` within ``window`` seconds is abuse."""

    __slots__ = ("limit", "times", "window")

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self.times: deque[float] = deque()

    def add(self, now: float | None = None) -> bool:
        """Record a strike; return True when the connection has now crossed the limit."""
        now = time.monotonic() if now is None else now
        self.times.append(now)
        while self.times and self.times[0] < now - self.window:
            self.times.popleft()
        return len(self.times) >= self.limit
