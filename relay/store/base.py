"""The storage interface the relay runs on; SQLite implements it here, Redis later.

Every method is a coroutine so a networked backend fits; every write is durable
when its coroutine returns (the relay acks senders only after that).
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from relay.wire import OneTimePrekey, PrekeyBundle


class BindStatus(enum.Enum):
    NEW = "new"  # handle was free and is now bound to this identity
    MATCH = "match"  # handle already bound to this identity
    MISMATCH = "mismatch"  # handle bound to another identity: refuse


class EnqueueStatus(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # (sender, msg) seen before within the TTL: not stored again
    QUOTA_EXCEEDED = "quota_exceeded"
    UNKNOWN_RECIPIENT = "unknown_recipient"


@dataclass(frozen=True)
class Envelope:
    """One queued envelope. ``seq`` is the relay's number for it, unique and increasing."""

    seq: int
    recipient: str
    sender: str
    msg: str
    body: bytes
    ts: int  # milliseconds since the epoch, when stored


@dataclass(frozen=True)
class EnqueueResult:
    status: EnqueueStatus
    envelope: Envelope | None = None  # set when STORED


@dataclass(frozen=True)
class FetchedBundle:
    """A bundle handed out once: the signed part plus at most one consumed one-time prekey."""

    bundle: PrekeyBundle
    remaining: int  # one-time prekeys left after this fetch


class BundleRefused(Exception):
    """An upload the store will not keep (e.g. too many one-time prekeys stored)."""


@dataclass(frozen=True)
class StoreLimits:
    quota_messages: int = 10_000  # queued envelopes per recipient
    quota_bytes: int = 64 * 1024 * 1024  # queued body bytes per recipient
    ttl_seconds: float = 14 * 24 * 3600  # queued envelopes and de-dup memory expire after this
    max_one_time_stored: int = 200  # one-time prekeys kept per handle


class Store(ABC):
    """Durable state of the relay: handle bindings, per-recipient queues, prekey bundles."""

    limits: StoreLimits

    @abstractmethod
    async def open(self) -> None:
        """Create or recover the store; after a crash every committed write is there."""

    @abstractmethod
    async def close(self) -> None:
        """Flush and release; pending operations finish first."""

    @abstractmethod
    async def bind_identity(self, handle: str, identity: bytes) -> BindStatus:
        """Bind ``handle`` to ``identity`` on first use; report whether later uses match."""

    @abstractmethod
    async def identity_of(self, handle: str) -> bytes | None:
        """The identity key bound to ``handle``, if any."""

    @abstractmethod
    def new_envelope(self, sender: str, recipient: str, msg: str, body: bytes) -> Envelope:
        """Number and time-stamp an envelope now (no I/O), so it can be delivered live at once.

        ``seq`` must be unique and increasing across the store's life (a networked
        backend can reserve blocks of numbers); gaps are fine.
        """

    @abstractmethod
    async def enqueue(self, envelope: Envelope) -> EnqueueResult:
        """Queue an envelope durably, unless duplicate, over quota or for an unknown handle."""

    @abstractmethod
    async def pending(self, recipient: str, limit: int) -> list[Envelope]:
        """The oldest ``limit`` envelopes still queued for ``recipient``."""

    @abstractmethod
    async def ack(self, recipient: str, seqs: Sequence[int]) -> int:
        """Delete these envelopes from ``recipient``'s own queue; return how many were there."""

    @abstractmethod
    async def queue_depth(self, recipient: str) -> int:
        """Envelopes queued for ``recipient``."""

    @abstractmethod
    def total_queue_depth(self) -> int:
        """Envelopes queued for everyone (cheap: used by /metrics)."""

    @abstractmethod
    async def expire(self) -> int:
        """Drop envelopes and de-dup records older than the TTL; return envelopes dropped."""

    @abstractmethod
    async def put_bundle(self, handle: str, bundle: PrekeyBundle) -> int:
        """Replace the signed part, add the one-time prekeys; return how many are stored."""

    @abstractmethod
    async def take_bundle(self, handle: str) -> FetchedBundle | None:
        """Hand out the bundle with one one-time prekey, removed atomically (None: no bundle)."""

    @abstractmethod
    async def prekey_count(self, handle: str) -> int:
        """One-time prekeys left for ``handle``."""


__all__ = [
    "BindStatus",
    "BundleRefused",
    "EnqueueResult",
    "EnqueueStatus",
    "Envelope",
    "FetchedBundle",
    "OneTimePrekey",
    "PrekeyBundle",
    "Store",
    "StoreLimits",
]
