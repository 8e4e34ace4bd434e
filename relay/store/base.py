"""The storage interface the relay runs on; SQLite implements it here, Redis later.

Every method is a coroutine so a networked backend fits; every write is durable
when its coroutine returns (the relay acks senders only after that).
"""

from __future__ import annotations

import asyncio
import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from relay.wire import OneTimePrekey, PrekeyBundle


class BindStatus(enum.Enum):
    NEW = "new"  # handle was free and is now bound to this identity
    MATCH = "match"  # handle already bound to this identity
    MISMATCH = "mismatch"  # handle bound to another identity: refuse


class EnqueueStatus(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # (sender, msg) seen before within the TTL: not stored again
    QUOTA_EXCEEDED = "quota_exceeded"  # the recipient's whole queue is full
    SHARE_EXCEEDED = "share_exceeded"  # this sender's share of the recipient's queue is full
    STORE_FULL = "store_full"  # the relay's store is at its global cap
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


class StreamStatus(enum.Enum):
    NEW = "new"  # registered now
    SAME = "same"  # already registered with these endpoints (expiry refreshed)
    TAKEN = "taken"  # the id belongs to a stream with other endpoints
    TOO_MANY = "too_many"  # the opener has its limit of open file streams


class SpoolStatus(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # (recipient, stream, seq) already spooled: nothing written
    QUOTA_EXCEEDED = "quota_exceeded"  # the recipient's whole spool is full
    SHARE_EXCEEDED = "share_exceeded"  # the sending endpoint's share of that spool is full
    STORE_FULL = "store_full"  # the relay's store is at its global cap
    UNKNOWN_STREAM = "unknown_stream"  # closed or expired before the frame got to the disk


@dataclass(frozen=True)
class StreamRecord:
    """A durable file stream: ``a`` opened it to ``b``; times in ms since the epoch."""

    stream: bytes
    a: str
    b: str
    created: int
    expires: int

    def other(self, handle: str) -> str | None:
        """The endpoint that is not ``handle`` (None: ``handle`` is not an endpoint). On a
        group stream the opener is the only other end (its recipients have none)."""
        if self.group:
            return self.a if handle in self.recipients else None
        if handle == self.a:
            return self.b
        if handle == self.b:
            return self.a
        return None

    @property
    def group(self) -> bool:
        """A group file stream: ``a`` uploads once, every recipient gets a spooled copy."""
        return self.b.startswith(GROUP_STREAM_MARK)

    @property
    def recipients(self) -> tuple[str, ...]:
        """Who gets this stream's frames: ``(b,)``, or a group stream's recipients."""
        if self.group:
            return tuple(self.b[1:].split(","))
        return (self.b,)


# A group file stream keeps its recipients in the registration's ``b`` column, as
# ``*`` + comma-separated handles (neither character is allowed in a handle). Both stores
# keep ``b`` as an opaque string and count a spooled frame against the share of the
# stream's other endpoint, which for every recipient of a group stream is its opener.
GROUP_STREAM_MARK = "*"


def group_stream_b(recipients: Sequence[str]) -> str:
    """The ``b`` of a group stream's registration (recipients sorted: idempotent)."""
    return GROUP_STREAM_MARK + ",".join(sorted(recipients))


@dataclass(frozen=True)
class SpoolResult:
    status: SpoolStatus
    row: int = 0  # the row's place in spool order when STORED (increasing, never reused)


@dataclass(frozen=True)
class SpooledFrame:
    """One spooled binary frame, exactly the bytes the sender sent."""

    row: int
    stream: bytes
    seq: int
    data: bytes


@dataclass(frozen=True)
class SpoolPage:
    """Frames after a cursor, oldest first; ``top`` is the highest row number in the whole
    spool when the page was read (a short page means nothing up to ``top`` was left out)."""

    frames: list[SpooledFrame]
    top: int


class StoreUnavailable(RuntimeError):
    """The store cannot be used as configured (its server unreachable, unsafe or missing a
    library); the message says what to do."""


class BundleRefused(Exception):
    """An upload the store will not keep (e.g. too many one-time prekeys stored)."""


@dataclass(frozen=True)
class StoreLimits:
    quota_messages: int = 10_000  # queued envelopes per recipient
    quota_bytes: int = 64 * 1024 * 1024  # queued body bytes per recipient
    ttl_seconds: float = 14 * 24 * 3600  # queued envelopes and de-dup memory expire after this
    max_one_time_stored: int = 200  # one-time prekeys kept per handle
    # Fair quotas (see quota_verdict): one sender may hold at most this fraction of a
    # recipient's queue (messages and bytes) and of its spool, so a stranger who fills his
    # share leaves room for everyone else. 1.0 turns shares off.
    sender_share: float = 0.25
    # Global cap on the bytes the store holds on disk (0: none); past it, writes are
    # refused with store_full. See SqliteStore for what is counted.
    max_store_bytes: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.sender_share <= 1.0:
            raise ValueError(f"sender_share must be in (0, 1], not {self.sender_share}")
        if self.max_store_bytes < 0:
            raise ValueError("max_store_bytes must be 0 (no cap) or positive")

    def share_of(self, quota: int) -> int:
        """One sender's share of a recipient's ``quota`` (messages or bytes): never 0."""
        return max(1, int(quota * self.sender_share))

    @property
    def share_messages(self) -> int:
        return self.share_of(self.quota_messages)

    @property
    def share_bytes(self) -> int:
        return self.share_of(self.quota_bytes)


class QuotaVerdict(enum.Enum):
    """Whose limit a write would break; the relay's refusal names it (see quota_verdict)."""

    OK = "ok"
    RECIPIENT = "quota_exceeded"  # the recipient's queue or spool is full
    SHARE = "share_exceeded"  # the sender's share of it is full
    STORE = "store_full"  # the relay's whole store is at its cap


def quota_verdict(size: int, *, held: int, held_bytes: int, quota: int, quota_bytes: int,
                  share_held: int, share_held_bytes: int, share: int, share_bytes: int,
                  store_used: int, store_cap: int) -> QuotaVerdict:
    """May one more item of ``size`` bytes be stored for a recipient?

    The policy every backend applies, so SQLite and a networked store refuse alike:
    ``held``/``held_bytes`` is what the recipient holds from everyone, ``share_held``/
    ``share_held_bytes`` what it holds from this sender; ``store_used`` is the store's
    whole size and ``store_cap`` its cap (0: none). The recipient's own quota is named
    first (it is the sender's business only when it is the sender's share that is full).
    """
    if held + 1 > quota or held_bytes + size > quota_bytes:
        return QuotaVerdict.RECIPIENT
    if share_held + 1 > share or share_held_bytes + size > share_bytes:
        return QuotaVerdict.SHARE
    if store_cap and store_used + size > store_cap:
        return QuotaVerdict.STORE
    return QuotaVerdict.OK


class Store(ABC):
    """Durable state of the relay: handle bindings, per-recipient queues, prekey bundles."""

    limits: StoreLimits
    # True when other relay processes write the same store (Redis): what this process
    # caches or counts of it (file-stream registrations, spool bytes) may be behind.
    shared: bool = False
    # Called with each commit's duration in seconds (from the thread that commits), if set:
    # the relay feeds its qsecret_relay_store_commit_seconds histogram from it.
    observe_commit: Callable[[float], None] | None = None

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
        """Queue an envelope durably, unless duplicate, over quota or for an unknown handle.

        Quotas follow :func:`quota_verdict` with ``limits``: the recipient's queue, the
        sender's share of it (what it holds from ``envelope.sender``) and the store's cap;
        the status says which one refused.
        """

    def enqueue_then(self, envelope: Envelope, callback: Callable[[bool, Any], None]) -> None:
        """:meth:`enqueue` without waiting: ``callback(ok, EnqueueResult | exception)`` later
        (a store that groups commits settles every callback of one commit in one loop pass)."""
        future = asyncio.ensure_future(self.enqueue(envelope))
        future.add_done_callback(lambda f: callback(*_outcome(f)))

    def behind(self) -> bool:
        """True when writes are queued faster than the store commits them: the relay then
        stops reading from senders (:meth:`wait_for_room`) so "stored" keeps pace."""
        return False

    async def wait_for_room(self) -> None:
        """Return once the store is no longer :meth:`behind` (or soon, whatever happens)."""
        return None

    @abstractmethod
    async def pending(self, recipient: str, limit: int) -> list[Envelope]:
        """The oldest ``limit`` envelopes still queued for ``recipient``."""

    @abstractmethod
    async def envelopes(self, recipient: str, seqs: Sequence[int]) -> list[Envelope]:
        """The envelopes among ``seqs`` still queued for ``recipient``, in seq order (acked,
        expired and unknown seqs are left out): one read for a whole redelivery, so the
        relay keeps only seqs, not bodies, for what is in flight."""

    @abstractmethod
    async def ack(self, recipient: str, seqs: Sequence[int]) -> int:
        """Delete these envelopes from ``recipient``'s own queue; return how many were there."""

    def ack_nowait(self, recipient: str, seqs: Sequence[int]) -> None:
        """:meth:`ack` without waiting (it still runs after every earlier operation)."""
        asyncio.ensure_future(self.ack(recipient, seqs))

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
        """Replace the signed part and the one-time prekeys (atomically, so no fetch gets a
        key that was dropped); return how many one-time prekeys are stored."""

    @abstractmethod
    async def take_bundle(self, handle: str) -> FetchedBundle | None:
        """Hand out the bundle with one one-time prekey, removed atomically (None: no bundle)."""

    @abstractmethod
    async def prekey_count(self, handle: str) -> int:
        """One-time prekeys left for ``handle``."""

    # File streams: registrations and the spool of frames held for an offline endpoint.

    @abstractmethod
    async def register_stream(self, stream: bytes, a: str, b: str, now_ms: int, expires_ms: int,
                              max_per_handle: int) -> StreamStatus:
        """Register ``a``'s file stream to ``b`` durably (idempotent for the same endpoints).

        A registration past its expiry counts as absent. ``max_per_handle`` bounds the
        streams ``a`` has opened.
        """

    @abstractmethod
    async def file_streams(self, now_ms: int) -> list[StreamRecord]:
        """Every registration not yet expired (the relay caches them for routing)."""

    async def file_stream(self, stream: bytes, now_ms: int) -> StreamRecord | None:
        """One registration, if not expired (a shared store's relays look up the streams
        another relay registered; this default scans them all)."""
        for record in await self.file_streams(now_ms):
            if record.stream == stream:
                return record
        return None

    @abstractmethod
    async def close_stream(self, stream: bytes) -> int:
        """Delete the registration and both directions' spool; return frames deleted."""

    @abstractmethod
    async def end_upload(self, stream: bytes) -> bool:
        """A group stream's opener has ended its upload: the registration stays while
        copies are spooled (members fetch them later) but no longer counts toward the
        opener's ``max_per_handle``; it is deleted with the last copy's ``spool_ack`` (or
        at once, returning True, when none is left). Registering it again reopens it."""

    @abstractmethod
    async def spool(self, recipient: str, stream: bytes, seq: int, data: bytes, now_ms: int,
                    expires_ms: int, quota_bytes: int) -> SpoolResult:
        """Hold a frame for ``recipient`` durably, within its ``quota_bytes``.

        The stream must still be registered (and not expired); its registration's
        expiry is pushed to at least ``expires_ms``. The sender is the stream's other
        endpoint: its share (``limits.share_of(quota_bytes)``) and the store's cap apply as
        in :meth:`enqueue`.
        """

    def spool_then(self, recipient: str, stream: bytes, seq: int, data: bytes, now_ms: int,
                   expires_ms: int, quota_bytes: int,
                   callback: Callable[[bool, Any], None]) -> None:
        """:meth:`spool` without waiting: ``callback(ok, SpoolResult | exception)`` later."""
        future = asyncio.ensure_future(
            self.spool(recipient, stream, seq, data, now_ms, expires_ms, quota_bytes))
        future.add_done_callback(lambda f: callback(*_outcome(f)))

    @abstractmethod
    async def spool_page(self, recipient: str, after: int, limit: int,
                         now_ms: int) -> SpoolPage:
        """Up to ``limit`` unexpired frames for ``recipient`` with row > ``after``, in order."""

    @abstractmethod
    async def spool_ack(self, recipient: str, stream: bytes, seqs: Sequence[int]) -> int:
        """Delete these frames of ``stream`` from ``recipient``'s spool; return how many."""

    def spool_ack_nowait(self, recipient: str, stream: bytes, seqs: Sequence[int]) -> None:
        """:meth:`spool_ack` without waiting (it still runs after every earlier operation)."""
        asyncio.ensure_future(self.spool_ack(recipient, stream, seqs))

    @abstractmethod
    async def expire_spool(self, now_ms: int) -> tuple[int, list[bytes]]:
        """Drop expired frames and registrations: return (frames dropped, streams expired)."""

    @abstractmethod
    def spool_bytes(self) -> int:
        """Bytes spooled for everyone (cheap: used by /metrics)."""

    @abstractmethod
    async def spool_bytes_of(self, recipient: str) -> int:
        """Bytes spooled for ``recipient``."""

    def barrier_then(self, callback: Callable[[bool, Any], None]) -> None:
        """Call ``callback(ok, None)`` once every write queued before this one is durable."""
        future = asyncio.ensure_future(self.barrier())
        future.add_done_callback(lambda f: callback(*_outcome(f)))

    @abstractmethod
    async def barrier(self) -> None:
        """Return once every write queued before this call is durable."""

    def describe(self) -> str:
        """Which store this is and where, for the relay's start-up line."""
        return type(self).__name__

    async def health(self) -> str | None:
        """Check a networked backend (raise when it is unreachable) and say so; None: an
        embedded store with nothing to check beyond the process itself."""
        return None


def _outcome(future: asyncio.Future[Any]) -> tuple[bool, Any]:
    if future.cancelled():
        return False, asyncio.CancelledError()
    if future.exception() is not None:
        return False, future.exception()
    return True, future.result()


__all__ = [
    "BindStatus",
    "BundleRefused",
    "EnqueueResult",
    "EnqueueStatus",
    "Envelope",
    "FetchedBundle",
    "OneTimePrekey",
    "PrekeyBundle",
    "QuotaVerdict",
    "SpoolPage",
    "SpoolResult",
    "SpoolStatus",
    "SpooledFrame",
    "Store",
    "StoreLimits",
    "StreamRecord",
    "StoreUnavailable",
    "StreamStatus",
    "quota_verdict",
]
