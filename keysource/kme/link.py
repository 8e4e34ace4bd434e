"""Feeds KME pools from the QKD link emulator (:mod:`keysource.qkd`) and watches the link.

``keysource.qkd`` is imported only when a link is started, so the KME (pool, ETSI server,
client) also works with keys coming from elsewhere (``qsecret kme pair --link none``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .linkstate import DEFAULT_LINK
from .node import KmeNode

log = logging.getLogger(__name__)

KeyBatch = Sequence[tuple[str, bytes]]


@dataclass(frozen=True)
class _Sample:
    at: float
    keys: int
    qber: float | None
    aborted: bool


class LinkMonitor:
    """Running link figures for the status line and ``/kme/v1/stats`` (no key material)."""

    def __init__(self, window_s: float = 30.0) -> None:
        self.window_s = window_s
        self.started = time.monotonic()
        self.blocks = 0
        self.aborted = 0
        self.keys = 0
        self.secret_bits = 0
        self.sifted_bits = 0
        self.auth_bits_used = 0
        self.last_qber: float | None = None
        self.last_abort_reason: str | None = None
        self.last_report_at: float | None = None
        self.last_block_s = 0.0
        self.last_error: str | None = None
        self._recent: deque[_Sample] = deque()

    def on_report(self, report: Any) -> None:
        """Record one BlockReport (see keysource.qkd)."""
        now = time.monotonic()
        self.blocks += 1
        self.last_report_at = now
        self.last_block_s = float(getattr(report, "duration_s", 0.0) or 0.0)
        aborted = bool(getattr(report, "aborted", False))
        qber = getattr(report, "qber", None)
        qber = float(qber) if qber is not None else None
        keys = int(getattr(report, "keys", 0) or 0)
        if aborted:
            self.aborted += 1
            self.last_abort_reason = str(getattr(report, "reason", "") or "aborted")
        else:
            self.keys += keys
            self.secret_bits += int(getattr(report, "secret_bits", 0) or 0)
        self.sifted_bits += int(getattr(report, "sifted_bits", 0) or 0)
        self.auth_bits_used += int(getattr(report, "auth_bits_used", 0) or 0)
        if qber is not None:
            self.last_qber = qber
        self._recent.append(_Sample(now, 0 if aborted else keys, qber, aborted))
        while self._recent and now - self._recent[0].at > self.window_s:
            self._recent.popleft()

    @property
    def connected(self) -> bool:
        """The link is up when a block finished recently (within 10 s or 5 block times)."""
        if self.last_report_at is None:
            return False
        return time.monotonic() - self.last_report_at < max(10.0, 5 * self.last_block_s)

    def key_rate(self) -> float:
        """Keys (256-bit) per second over the recent window."""
        now = time.monotonic()
        span = min(self.window_s, now - self.started)
        if span <= 0:
            return 0.0
        return sum(s.keys for s in self._recent if now - s.at <= self.window_s) / span

    def snapshot(self) -> dict[str, Any]:
        recent_qbers = [s.qber for s in self._recent if s.qber is not None]
        return {
            "connected": self.connected,
            "blocks": self.blocks,
            "aborted_blocks": self.aborted,
            "keys": self.keys,
            "key_rate_per_s": round(self.key_rate(), 3),
            "secret_bits": self.secret_bits,
            "sifted_bits": self.sifted_bits,
            "auth_bits_used": self.auth_bits_used,
            "last_qber": self.last_qber,
            "mean_qber_recent": (sum(recent_qbers) / len(recent_qbers)) if recent_qbers else None,
            "last_abort_reason": self.last_abort_reason,
            "last_error": self.last_error,
        }


class PoolLinkState:
    """A keysource.qkd.durable.LinkStateStore in a KME's pool: keys and state in one commit
    (keysource.kme.linkstate)."""

    def __init__(self, node: KmeNode, name: str = DEFAULT_LINK) -> None:
        self.node = node
        self.name = name

    async def load(self) -> bytes | None:
        return await self.node.link_state(self.name)

    async def commit(self, state: bytes, keys: Sequence[tuple[str, bytes]]) -> None:
        await self.node.add_keys(list(keys), link_state=(self.name, state))


def _adder(node: KmeNode) -> Callable[[KeyBatch], Awaitable[int]]:
    async def on_keys(batch: KeyBatch) -> int:
        return await node.add_keys(list(batch))

    return on_keys


# CLI option -> LinkParams field
_PARAM_NAMES = {"km": "fibre_km", "eve_fraction": "intercept_fraction", "pns": "pns",
                "seed": "seed"}


def link_params(**options: Any) -> Any:
    """Build ``keysource.qkd.LinkParams`` from the CLI's options (None = emulator default)."""
    from keysource.qkd import LinkParams

    return LinkParams(**{
        _PARAM_NAMES.get(k, k): v for k, v in options.items() if v is not None and v is not False
    })


async def run_pair_link(
    node_a: KmeNode,
    node_b: KmeNode,
    params: Any,
    monitor: LinkMonitor,
    stop: asyncio.Event,
    lanes: int = 1,
) -> None:
    """Both link ends in this process; keys go into both pools, back-pressure from the fuller.
    ``lanes`` > 1 runs that many blocks at once, each in a worker process (qkd/lanes.py).

    A batch is written to pool A, then to pool B (two files: no transaction spans both), so
    a kill between the two leaves keys in A only. Such keys are free, and the link that
    starts again here is a new one that never sends them again: they are destroyed at the
    start (see :func:`reconcile_pair`), so both pools hold the same keys.
    """
    from keysource import qkd

    await reconcile_pair(node_a, node_b)

    callbacks: dict[str, Any] = dict(
        on_keys_a=_adder(node_a),
        on_keys_b=_adder(node_b),
        on_report=monitor.on_report,
        stop=stop,
        room=lambda: min(node_a.room(), node_b.room()),
    )
    if lanes == 1:
        await qkd.run_pair_link(params, **callbacks)
    else:
        await qkd.run_lanes(params, lanes, **callbacks)


async def reconcile_pair(node_a: KmeNode, node_b: KmeNode) -> int:
    """Destroy free keys that only one pool of a pair holds; return how many."""
    free_a, free_b = await node_a.free_key_ids(), await node_b.free_key_ids()
    only_a, only_b = free_a - free_b, free_b - free_a
    # A key bound at one end has its copy bound (or delivered) at the other: not touched.
    held_b, held_a = node_b.pool.key_ids(), node_a.pool.key_ids()
    only_a -= held_b
    only_b -= held_a
    discarded = 0
    if only_a:
        discarded += await node_a.discard_free(only_a)
    if only_b:
        discarded += await node_b.discard_free(only_b)
    if discarded:
        log.warning("pair start: %d free keys held by one pool only (a stop between the "
                    "two writes of a batch) destroyed", discarded)
    return discarded


async def run_link_endpoint(
    node: KmeNode,
    *,
    role: str,
    host: str,
    port: int,
    params: Any,
    psk: bytes,
    auth_store: Path,
    monitor: LinkMonitor,
    stop: asyncio.Event,
    on_listening: Callable[[int], Any] | None = None,
) -> None:
    """One link end over TCP (alice connects and reconnects, bob listens) until ``stop``.

    The link's state (authentication key streams, block numbers, a block awaiting commit) is
    kept in the pool, written in the same transaction as the keys of each step
    (keysource.kme.linkstate), so a KME killed at any point resumes the link where both ends
    agree and never reuses one-time authentication key. ``auth_store`` is the file where
    older versions kept the authentication streams: read once if the pool has no link state
    yet, then removed.
    """
    from keysource import qkd

    await qkd.run_link_endpoint(
        role,  # type: ignore[arg-type]
        host=host,
        port=port,
        params=params,
        psk=psk,
        on_keys=_adder(node),
        on_report=monitor.on_report,
        stop=stop,
        room=node.room,
        auth_store=auth_store,
        on_listening=on_listening,
        state_store=PoolLinkState(node),
    )
