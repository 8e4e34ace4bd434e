"""Limits: a token bucket for the frame rate, strikes for abuse, new handles per address,
and the text of quota refusals (whose quota it is)."""

from __future__ import annotations

import ipaddress
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

    def delay(self, now: float | None = None, count: float = 1.0) -> float:
        """Spend ``count`` tokens, borrowing if needed; return how long to wait until they
        were due."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= count
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


class RegistrationLimit:
    """New handles per source address in a sliding window: ``limit`` per ``window`` seconds.

    Handles are free, and each claims a queue and a spool: this bounds how fast one place
    can claim them. IPv6 addresses count per /64 (one subscriber's usual allocation), IPv4
    per address; addresses in ``exempt`` networks are not counted (default loopback, where
    tests, the demo and a same-host reverse proxy connect from; behind a proxy the relay
    sees only the proxy's address). Memory: one deque per address that registered within
    the last window, of at most ``limit`` times; older ones are pruned as time passes.
    """

    def __init__(self, limit: int, window: float, exempt: tuple[str, ...] = ()) -> None:
        if limit < 0 or window <= 0:
            raise ValueError("the registration limit must be 0 (none) or more, and its "
                             "window positive")
        self.limit = limit  # 0: no limit
        self.window = window
        self.exempt = tuple(ipaddress.ip_network(net, strict=False) for net in exempt)
        self._times: dict[str, deque[float]] = {}
        self._pruned = 0.0

    def key(self, address: str) -> str | None:
        """What ``address`` counts as (None: not counted)."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return address  # not an IP (e.g. a unix socket path): counted as it is
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.exempt):
            return None
        if isinstance(ip, ipaddress.IPv6Address):
            return str(ipaddress.IPv6Network((ip, 64), strict=False))
        return str(ip)

    def take(self, address: str, now: float | None = None) -> bool:
        """Count one new registration from ``address``; False when it is over the limit
        (then nothing is counted, so refusals do not extend the wait)."""
        if not self.limit:
            return True
        key = self.key(address)
        if key is None:
            return True
        now = time.monotonic() if now is None else now
        if now - self._pruned > self.window:
            self._prune(now)
        times = self._times.setdefault(key, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.limit:
            return False
        times.append(now)
        return True

    def retry_after(self, address: str, now: float | None = None) -> float:
        """Seconds until ``address`` may register again (0: now)."""
        key = self.key(address)
        times = self._times.get(key) if key is not None else None
        if not self.limit or not times or len(times) < self.limit:
            return 0.0
        now = time.monotonic() if now is None else now
        return max(0.0, times[0] + self.window - now)

    def _prune(self, now: float) -> None:
        self._pruned = now
        for key in [k for k, times in self._times.items() if times[-1] <= now - self.window]:
            del self._times[key]


def size_text(count: int) -> str:
    """A byte count for people: 4 GiB, 500 MiB, 1000 bytes."""
    for unit, scale in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if count >= scale:
            value = count / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{count} bytes"


def quota_refusal(code: str, recipient: str, *, place: str, messages: int | None,
                  size: int) -> str:
    """The text of a quota refusal, naming whose quota it is (the code says which kind).

    ``place`` is "queue" or "spool"; ``messages``/``size`` are the limit that was hit
    (the share for ``share_exceeded``, the recipient's quota for ``quota_exceeded``, the
    store's cap for ``store_full``; ``messages`` None when only bytes count).
    """
    amount = size_text(size)
    if messages is not None:
        amount = f"{messages} message{'' if messages == 1 else 's'} / {amount}"
    if code == "share_exceeded":
        return (f"your share of {recipient}'s {place} is full ({amount} from one sender); "
                f"it frees as {recipient} receives what you sent")
    if code == "store_full":
        return f"the relay's store is full ({amount} on disk); nothing was stored, try later"
    return f"{recipient}'s {place} is full ({amount}); try later"
