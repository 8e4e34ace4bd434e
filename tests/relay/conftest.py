"""Fixtures: a fresh relay subprocess per test (module-scoped where state does not matter)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.relay.harness import RelayProcess, start_relay
from tests.relay.redis_server import RedisServer
from tests.relay.stores import KINDS, StoreFactory


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module that sets ``RELAY_STORES = KINDS`` runs its ``relay`` tests on every store."""
    kinds = getattr(metafunc.module, "RELAY_STORES", None)
    if kinds and "relay_store" in metafunc.fixturenames:
        metafunc.parametrize("relay_store", kinds, indirect=True)


@pytest.fixture
def relay_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, ...]]:
    """The ``qsecret relay`` arguments for the store under test (SQLite: none; Redis: a real
    redis-server in strict mode, started here and stopped after the test)."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield ()
        return
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield ("--store", server.url)
    finally:
        server.stop()


@pytest.fixture
def relay(tmp_path: Path, relay_store: tuple[str, ...]) -> Iterator[RelayProcess]:
    process = start_relay(tmp_path / "relay", "--redeliver-after", "2", *relay_store)
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
