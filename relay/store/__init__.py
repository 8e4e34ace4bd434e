"""Relay storage: the :class:`Store` interface, its SQLite implementation (embedded default)
and its Redis one (relay/store/redis.py, imported only for ``--store redis://``)."""

from __future__ import annotations

from pathlib import Path

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
    StoreUnavailable,
    StreamRecord,
    StreamStatus,
    group_stream_b,
    quota_verdict,
)
from .sqlite import SqliteStore

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def make_store(store_url: str | None, data_dir: Path, limits: StoreLimits, *,
               sync: str = "FULL", commit_interval: float = 0.004, writer_nice: int = 19,
               redis_durability: str = "strict", consumer: str | None = None) -> Store:
    """The store a relay runs on: SQLite in ``data_dir`` unless ``store_url`` names a Redis
    (``consumer``: the relay's name in the Redis consumer groups, kept across restarts)."""
    if store_url is None or store_url == "sqlite":
        return SqliteStore(data_dir / "relay.sqlite3", limits, synchronous=sync,
                           commit_interval=commit_interval, writer_nice=writer_nice)
    if store_url.startswith(REDIS_SCHEMES):
        from .redis import RedisStore

        return RedisStore(store_url, limits, durability=redis_durability, consumer=consumer)
    raise ValueError(f"--store must be sqlite or redis://HOST:PORT/DB, not {store_url!r}")

__all__ = [
    "BindStatus",
    "BundleRefused",
    "REDIS_SCHEMES",
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
    "StoreUnavailable",
    "StreamRecord",
    "group_stream_b",
    "StreamStatus",
    "make_store",
    "quota_verdict",
]
