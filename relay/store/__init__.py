"""Relay storage: the :class:`Store` interface and its SQLite implementation."""

from .base import (
    BindStatus,
    BundleRefused,
    EnqueueResult,
    EnqueueStatus,
    Envelope,
    FetchedBundle,
    QuotaVerdict,
    SpooledFrame,
    SpoolPage,
    SpoolResult,
    SpoolStatus,
    Store,
    StoreLimits,
    StreamRecord,
    StreamStatus,
    quota_verdict,
)
from .sqlite import SqliteStore

__all__ = [
    "BindStatus",
    "BundleRefused",
    "EnqueueResult",
    "EnqueueStatus",
    "Envelope",
    "FetchedBundle",
    "QuotaVerdict",
    "SpoolPage",
    "SpoolResult",
    "SpoolStatus",
    "SpooledFrame",
    "SqliteStore",
    "Store",
    "StoreLimits",
    "StreamRecord",
    "StreamStatus",
    "quota_verdict",
]
