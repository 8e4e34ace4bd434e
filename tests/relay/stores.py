"""Both stores behind one factory, so the store tests run against SQLite and Redis alike."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay.store import SqliteStore, Store, StoreLimits
from tests.relay.redis_server import RedisServer

KINDS = ("sqlite", "redis")


@dataclass
class StoreFactory:
    """Makes stores over one backing (a database file, or one redis-server): a second
    ``make()`` is the same data opened again, as after a relay restart."""

    kind: str
    directory: Path
    redis: RedisServer | None = None

    def make(self, limits: StoreLimits | None = None, **options: Any) -> Store:
        if self.kind == "sqlite":
            options.setdefault("synchronous", "NORMAL")
            return SqliteStore(self.directory / "s.db", limits, **options)
        from relay.store.redis import RedisStore

        assert self.redis is not None
        return RedisStore(self.redis.url, limits, **options)

    async def open(self, limits: StoreLimits | None = None, **options: Any) -> Store:
        store = self.make(limits, **options)
        await store.open()
        return store


def batches(store: Store) -> int:
    """Grouped writes so far: SQLite commits, Redis pipelines."""
    return int(getattr(store, "commits", None) or getattr(store, "round_trips", 0))
