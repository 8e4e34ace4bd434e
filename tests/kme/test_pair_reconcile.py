"""``qsecret kme pair`` writes each link batch to pool A, then pool B: a kill between the two
leaves keys in A only. At the next start such free keys are destroyed, so both pools hold the
same keys and none of them can be handed to one SAE without its copy at the other KME."""

from __future__ import annotations

from pathlib import Path

from keysource.kme.link import reconcile_pair
from keysource.kme.node import KmeNode, StaticSaeRegistry
from keysource.kme.pool import UNPAIRED_SAE, KeyPool
from keysource.kme.runtime import KME_A, KME_B, pool_path

from .conftest import random_batch, start_pair


async def test_keys_only_one_pool_holds_are_destroyed(tmp_path: Path) -> None:
    saes = StaticSaeRegistry(["m", "s"])
    a = KmeNode(saes=saes, kme_id="A", peer_kme_id="B", allocator=True,
                pool=KeyPool(tmp_path / "a.db"))
    b = KmeNode(saes=saes, kme_id="B", peer_kme_id="A", allocator=False,
                pool=KeyPool(tmp_path / "b.db"))
    try:
        shared, only_a, only_b = random_batch(20), random_batch(7), random_batch(3)
        await a.add_keys(shared + only_a)  # the kill came after A's write of only_a ...
        await b.add_keys(shared + only_b)  # ... and (another time) after B's
        assert await reconcile_pair(a, b) == 10
        assert a.pool.key_ids() == b.pool.key_ids() == {k for k, _ in shared}
        journal = a.pool.delivered_ids() | b.pool.delivered_ids()
        assert {k for k, _ in only_a + only_b} <= journal  # a batch cannot bring them back
        rows = a.pool._db.execute("SELECT DISTINCT sae FROM delivered").fetchall()
        assert rows == [(UNPAIRED_SAE,)]
        assert await a.add_keys(only_a) == 0
        assert await reconcile_pair(a, b) == 0
    finally:
        a.close()
        b.close()


def test_a_restarted_pair_starts_with_equal_pools(tmp_path: Path) -> None:
    pair = start_pair(tmp_path)  # --link none: the data directory and its empty pools
    pair.process.stop()
    stray = random_batch(5)
    with KeyPool(pool_path(tmp_path, KME_A)) as pool:  # as if killed between the writes
        pool.add_keys(stray)
    pair = start_pair(tmp_path, "--link", "emulated", "--seed", "3", "--keys-ready", "1")
    try:
        pair.process.wait_for(r"^keys ready", timeout_s=300)
    finally:
        pair.process.stop()
    with KeyPool(pool_path(tmp_path, KME_A)) as a, KeyPool(pool_path(tmp_path, KME_B)) as b:
        assert a.key_ids() == b.key_ids()
        assert {k for k, _ in stray}.isdisjoint(a.key_ids())
