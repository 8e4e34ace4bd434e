"""Relay storage: the :class:`Store` interface and its SQLite implementation."""

from .base import (
    BindStatus,
    BundleRefused,
    EnqueueResult,
    EnqueueStatus,
    Envelope,
    FetchedBundle,
    Store,
    StoreLimits,
)
from .sqlite import SqliteStore

__all__ = [
    "BindStatus",
    "BundleRefused",
    "EnqueueResult",
    "EnqueueStatus",
    "Envelope",
    "FetchedBundle",
    "SqliteStore",
    "Store",
    "StoreLimits",
]
