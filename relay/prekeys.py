"""The prekey directory: publish a bundle, hand it out one one-time prekey per fetch.

What one user's fetches may cost the bundle's owner is bounded here:

* ``prekeys_low`` goes to the owner once per threshold crossing: only the fetch that takes
  the count from ``PREKEYS_LOW`` to ``PREKEYS_LOW - 1``. Every fetch takes at most one key,
  under the store's single writer, so exactly one fetch sees that count; the fetches after
  it send nothing. An upload that lifts the count back to ``PREKEYS_LOW`` or more re-arms it.
  Nothing is remembered per handle (so any relay sharing the store behaves the same).
* ``prekeys_fetch`` is rate-limited per requesting handle (a token bucket of
  ``prekey_fetch_rate`` per second, bursts of ``prekey_fetch_burst``, shared by all of the
  requester's connections): over it the answer is ``error{rate_limited}`` naming the limit,
  and no key is taken.
* An upload replaces the one-time prekeys the relay holds (see ``Store.put_bundle``): the
  client prunes private keys only after the relay has dropped their public halves.
"""

from __future__ import annotations

import logging
import time

from keysource.pq import InvalidKey, InvalidSignature
from relay import wire
from relay.auth import Verifier
from relay.config import RelayConfig
from relay.limits import TokenBucket
from relay.metrics import Metrics
from relay.routing import Router
from relay.session import Session
from relay.store import BundleRefused, Store

log = logging.getLogger("qsecret.relay")

PREKEYS_LOW = 10  # tell the owner to upload more when a fetch leaves fewer than this
MIN_TRACKED = 1024  # requesters' buckets kept before idle (full) ones are dropped


class Prekeys:
    """``prekeys_upload`` and ``prekeys_fetch`` of logged-in sessions."""

    def __init__(self, config: RelayConfig, store: Store, router: Router[Session],
                 metrics: Metrics, verifier: Verifier) -> None:
        self.config = config
        self.store = store
        self.router = router
        self.metrics = metrics
        self.verifier = verifier
        if not (config.prekey_fetch_rate > 0 and config.prekey_fetch_burst >= 1):
            raise ValueError("the prekey fetch rate must be positive and its burst at least 1")
        self._buckets: dict[str, TokenBucket] = {}
        self._prune_at = MIN_TRACKED

    async def on_upload(self, session: Session, frame: wire.PrekeysUpload) -> int | None:
        handle = session.handle
        assert handle is not None
        bundle = frame.bundle
        if bundle.identity != session.core.identity:
            return session.refuse("bad_prekeys",
                                  "bundle identity is not the key this handle logged in with",
                                  req_id=frame.id)
        try:
            await self.verifier.run(wire.verify_bundle, handle, bundle, self.verifier.scheme.verify)
        except (InvalidSignature, InvalidKey) as exc:
            return session.refuse("bad_prekeys", f"bundle rejected: {exc}", req_id=frame.id)
        try:
            stored = await self.store.put_bundle(handle, bundle)
        except BundleRefused as exc:
            return session.refuse("quota_exceeded", str(exc), strike=False, req_id=frame.id)
        session.post(wire.PrekeysOk(stored, frame.id).encode())
        return None

    async def on_fetch(self, session: Session, frame: wire.PrekeysFetch) -> None:
        requester = session.handle
        assert requester is not None
        wait = self._admit(requester, time.monotonic())
        if wait > 0:
            self.metrics.count("qsecret_relay_prekey_fetches_total", "one_time", "rate_limited")
            session.refuse(
                "rate_limited",
                f"prekeys_fetch is limited to {self.config.prekey_fetch_rate:g} per second "
                f"per user (bursts of {self.config.prekey_fetch_burst:g}); "
                f"try again in {wait:.1f}s",
                strike=False, req_id=frame.id)
            return
        fetched = await self.store.take_bundle(frame.handle)
        if fetched is None:
            session.refuse("no_bundle", f"{frame.handle!r} has published no prekeys",
                           strike=False, req_id=frame.id)
            return
        self.metrics.count("qsecret_relay_prekey_fetches_total", "one_time",
                           "yes" if fetched.bundle.one_time else "none_left")
        session.post(
            wire.Bundle(frame.handle, fetched.bundle, fetched.remaining, frame.id).encode()
        )
        if fetched.bundle.one_time and fetched.remaining == PREKEYS_LOW - 1:
            for owner in self.router.sessions(frame.handle):
                owner.post(wire.PrekeysLow(fetched.remaining).encode())

    def _admit(self, requester: str, now: float) -> float:
        """Spend one of ``requester``'s fetch tokens: 0 when allowed, else seconds to wait."""
        rate, burst = self.config.prekey_fetch_rate, self.config.prekey_fetch_burst
        bucket = self._buckets.get(requester)
        if bucket is None:
            if len(self._buckets) >= self._prune_at:
                self._prune(now)
            bucket = self._buckets[requester] = TokenBucket(rate, burst, now)
        if bucket.take(now):
            return 0.0
        return (1.0 - bucket.tokens) / rate

    def _prune(self, now: float) -> None:
        """Forget buckets that have filled up again (their owners are idle): memory stays
        proportional to the users fetching right now, at O(1) amortised cost per fetch."""
        rate, burst = self.config.prekey_fetch_rate, self.config.prekey_fetch_burst
        self._buckets = {
            handle: bucket for handle, bucket in self._buckets.items()
            if bucket.tokens + (now - bucket.stamp) * rate < burst
        }
        self._prune_at = max(MIN_TRACKED, 2 * len(self._buckets))


__all__ = ["PREKEYS_LOW", "Prekeys"]
