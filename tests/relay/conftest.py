"""Fixtures: a fresh relay subprocess per test (module-scoped where state does not matter)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.relay.harness import RelayProcess, start_relay
from tests.relay.redis_server import RedisServer
from tests.relay.stores import KINDS, StoreFactory


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayProcess]:
    process = start_relay(tmp_path / "relay", "--redeliver-after", "2")
    yield process
    process.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server in strict mode (AOF, appendfsync always) on a free loopback port."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture(params=KINDS)
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Store tests run on each store: SQLite in tmp_path, Redis on a real redis-server."""
    if request.param == "sqlite":
        yield StoreFactory("sqlite", tmp_path)
        return
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield StoreFactory("redis", tmp_path, server)
    finally:
        server.stop()
