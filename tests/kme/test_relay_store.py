"""A network node's own key store: keys for one SAE pair, for its slave only, once (plus the
redelivery grace), destroyed when unfetched too long, and a key_ID never stored twice."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from keysource.kme.pool import KeyLookupError, PoolKey
from keysource.kme.relay_store import DuplicateKey, LocalKeyStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def keys(count: int) -> list[PoolKey]:
    return [PoolKey(str(uuid.uuid4()), os.urandom(32)) for _ in range(count)]


@pytest.fixture
def clock() -> Clock:
    return Clock()


def store(path: Path, clock: Clock, grace: float = 60.0) -> LocalKeyStore:
    return LocalKeyStore(path / "own.sqlite", redelivery_grace_s=grace, ttl_s=300,
                         tombstone_s=1000, clock=clock)


def test_the_slave_gets_its_keys_once_within_the_grace(tmp_path: Path, clock: Clock) -> None:
    own = store(tmp_path, clock)
    two = keys(2)
    own.put("m", "s", two)
    ids = [k.key_ID for k in two]
    with pytest.raises(KeyLookupError) as other:
        own.take_for_slave("m", "intruder", ids)
    assert other.value.foreign == tuple(ids)
    assert own.take_for_slave("m", "s", ids) == two
    clock.now += 59  # its answer was lost: the same slave may fetch again ...
    assert own.take_for_slave("m", "s", ids[:1]) == two[:1]
    clock.now += 2  # ... until the grace ends
    with pytest.raises(KeyLookupError):
        own.take_for_slave("m", "s", ids[:1])
    assert own.sweep() == 2 and own.counts() == {"waiting": 0, "redeliverable": 0}
    with pytest.raises(DuplicateKey):  # the tombstone still refuses a replay of the key_ID
        own.put("m", "s", two[:1])
    own.close()


def test_all_or_nothing_and_unfetched_keys_expire(tmp_path: Path, clock: Clock) -> None:
    own = store(tmp_path, clock, grace=0)
    (first,), (second,) = keys(1), keys(1)
    own.put("m", "s", [first])
    with pytest.raises(KeyLookupError):
        own.take_for_slave("m", "s", [first.key_ID, second.key_ID])
    assert own.counts()["waiting"] == 1  # nothing was handed out
    with pytest.raises(DuplicateKey):
        own.put("m", "s", [second, first])
    assert own.key_ids() == {first.key_ID: first.key}  # the refused batch left nothing
    clock.now += 301
    with pytest.raises(KeyLookupError):
        own.take_for_slave("m", "s", [first.key_ID])
    assert own.sweep() == 1 and own.key_ids() == {}
    clock.now += 1000
    own.sweep()  # the tombstone goes too
    own.put("m", "s", [first])
    own.close()
