"""Relay storage: the :class:`Store` interface and its SQLite implementation."""

from .base import (
    BindStatus,
    BundleRefused,
    EnqueueResult,
    EnqueueStatus,
    Envelope,
    FetchedBundle,
    SpooledFrame,
    SpoolPage,
    SpoolResult,
    SpoolStatus,
    Store,
    StoreLimits,
    StreamRecord,
    StreamStatus,
)
from .sqlite import SqliteStore

__all__ = [
    "BindStatus",
    "BundleRefused",
    "EnqueueResult",
    "EnqueueStatus",
    "Envelope",
    "FetchedBundle",
    "SpoolPage",
    "SpoolResult",
    "SpoolStatus",
    "SpooledFrame",
    "SqliteStore",
    "Store",
    "StoreLimits",
    "StreamRecord",
    "StreamStatus",
]
