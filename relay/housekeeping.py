"""Timers and numbers: the sweeper (timeouts, redelivery, expiry, full GC) and /metrics.

The garbage-collection policy lives here too: with thousands of connections the
relay holds millions of long-lived objects and every automatic full GC pass walks
them all (tens of milliseconds, straight into the latency tail), so full passes
run from the sweeper instead (:func:`tune_gc`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Collection

from relay.config import RelayConfig
from relay.envelopes import Envelopes
from relay.metrics import Metrics
from relay.routing import Router
from relay.session import Session
from relay.store import Store
from relay.streams import Streams

log = logging.getLogger("qsecret.relay")

GC_YOUNG_THRESHOLD = 50_000
GC_MIDDLE_THRESHOLD = 20
GC_NO_AUTOMATIC_FULL = 1 << 30  # full passes come from the sweeper instead


def tune_gc() -> None:
    """Keep the cyclic GC from pausing the event loop under load.

    What exists at start-up is frozen out of the GC, young generations are collected
    less often (every 50,000 allocations instead of 700), and the full pass runs only
    from the sweeper, every ``gc_interval`` seconds, so closed connections' cycles are
    still reclaimed.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, GC_MIDDLE_THRESHOLD, GC_NO_AUTOMATIC_FULL)


class Housekeeper:
    """Once a sweep interval: every connection's timeouts and redeliveries; now and then
    the store's expiry and a full GC pass."""

    def __init__(self, config: RelayConfig, store: Store, sessions: Collection[Session],
                 envelopes: Envelopes, streams: Streams, metrics: Metrics,
                 close_later: Callable[[Session, int, str], None]) -> None:
        self.config = config
        self.store = store
        self.sessions = sessions
        self.envelopes = envelopes
        self.streams = streams
        self.metrics = metrics
        self.close_later = close_later

    async def run(self) -> None:
        next_expire = 0.0
        next_gc = time.monotonic() + self.config.gc_interval
        while True:
            await asyncio.sleep(self.config.sweep_interval)
            now = time.monotonic()
            try:
                self.sweep(now)
                if now >= next_expire:
                    next_expire = now + self.config.expire_interval
                    await self.expire()
                if now >= next_gc:
                    next_gc = now + self.config.gc_interval
                    self.full_gc()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sweep failed")

    def sweep(self, now: float) -> None:
        for session in list(self.sessions):
            timeout = session.core.check_timeouts(now)
            if timeout is not None:
                self.close_later(session, *timeout)
            elif session.handle is not None:
                self.envelopes.redeliver(session, now)

    async def expire(self) -> None:
        dropped = await self.store.expire()
        if dropped:
            self.metrics.count("qsecret_relay_expired_total", amount=dropped)
            log.info("expired %d envelopes past the TTL", dropped)
        await self.streams.expire()

    def full_gc(self) -> None:
        """The cyclic GC's full pass, at a time of our choosing (see :func:`tune_gc`)."""
        started = time.perf_counter()
        found = gc.collect()
        self.metrics.count("qsecret_relay_gc_full_total")
        log.debug("full GC pass: %d unreachable objects in %.1f ms", found,
                  (time.perf_counter() - started) * 1000)


def describe_metrics(metrics: Metrics, *, sessions: Collection[Session],
                     router: Router[Session], store: Store, streams: Streams,
                     frames_in: Callable[[], int], frames_inline: Callable[[], int],
                     early_flushes: Callable[[], int], frames_out: Callable[[], int]) -> None:
    m = metrics
    m.describe("qsecret_relay_connections_total", "websocket connections accepted")
    m.counter_from("qsecret_relay_frames_in_total", "frames received", frames_in)
    m.counter_from("qsecret_relay_frames_inline_total",
                   "frames received and handled where they were read (send, ack, ping)",
                   frames_inline)
    m.counter_from("qsecret_relay_frames_out_total", "frames sent", frames_out)
    m.counter_from("qsecret_relay_cork_early_flushes_total",
                   "corked writes flushed inside a long loop pass (waited Cork.max_wait)",
                   early_flushes)
    m.describe("qsecret_relay_errors_total", "error frames sent, by code")
    m.describe("qsecret_relay_envelopes_total", "envelopes received, by result")
    m.describe("qsecret_relay_deliveries_total", "deliver frames sent")
    m.describe("qsecret_relay_acks_total", "delivery acks received")
    m.describe("qsecret_relay_closed_total", "connections closed by the relay, by code")
    m.describe("qsecret_relay_gc_full_total", "full cyclic-GC passes run by the sweeper")
    m.gauge("qsecret_relay_connections", "open websocket connections", lambda: len(sessions))
    m.gauge("qsecret_relay_authenticated_connections", "logged-in connections", router.online)
    m.gauge("qsecret_relay_queue_depth", "envelopes queued for all recipients",
            store.total_queue_depth)
    m.describe("qsecret_relay_file_frames_total",
               "file-stream frames accepted, by path (live, spooled, duplicate)")
    m.describe("qsecret_relay_spool_refusals_total",
               "file-stream frames refused because the recipient's spool quota is full")
    m.describe("qsecret_relay_spool_sent_total", "spooled file-stream frames sent")
    m.describe("qsecret_relay_spool_expired_total", "spooled frames dropped past the TTL")
    m.describe("qsecret_relay_stream_acks_total", "file-stream seqs acked by receivers")
    m.describe("qsecret_relay_file_streams_opened_total", "file streams registered")
    m.gauge("qsecret_relay_spool_bytes", "bytes of file-stream frames spooled for everyone",
            store.spool_bytes)
    m.gauge("qsecret_relay_file_streams", "durable file streams open",
            lambda: len(streams.file_streams))


__all__ = ["GC_NO_AUTOMATIC_FULL", "GC_YOUNG_THRESHOLD", "Housekeeper", "describe_metrics",
           "tune_gc"]
