"""The binding protocol between two KMEs (pair mode: real pools, peers called in-process)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from keysource.kme import etsi
from keysource.kme.node import KmeNode, LocalPeer, StaticSaeRegistry
from keysource.kme.pool import BindingConflict, KeyPool

from .conftest import random_batch

SAES = StaticSaeRegistry(["m", "s"])  # the SAEs these tests' KMEs have registered


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[KmeNode, KmeNode]]:
    a = KmeNode(saes=SAES, kme_id="A", peer_kme_id="B", allocator=True,
                pool=KeyPool(tmp_path / "a.db"),
                arrival_wait_s=0.2, unshared_after_s=0.0)
    b = KmeNode(saes=SAES, kme_id="B", peer_kme_id="A", allocator=False,
                pool=KeyPool(tmp_path / "b.db"),
                arrival_wait_s=0.2)
    a.peer, b.peer = LocalPeer(b), LocalPeer(a)
    yield a, b
    a.close()
    b.close()


REQ = etsi.EncKeysRequest(number=2, size=256)


async def test_both_directions_share_one_allocator(nodes: tuple[KmeNode, KmeNode]) -> None:
    a, b = nodes
    batch = random_batch(8)
    await a.add_keys(batch)
    await b.add_keys(batch)
    from_a = await a.enc_keys("m", "s", REQ)
    from_b = await b.enc_keys("s", "m", REQ)
    assert not {k.key_ID for k in from_a} & {k.key_ID for k in from_b}
    assert await b.dec_keys("m", "s", [k.key_ID for k in from_a]) == from_a
    assert await a.dec_keys("s", "m", [k.key_ID for k in from_b]) == from_b
    # Four keys left at both ends, none of them promised to anybody.
    assert (await a.pool_stats())["free"] == (await b.pool_stats())["free"] == 4


async def test_a_batch_lost_at_the_follower_is_cancelled_and_the_rest_reused(
    nodes: tuple[KmeNode, KmeNode],
) -> None:
    a, b = nodes
    shared, lost, later = random_batch(1), random_batch(1), random_batch(4)
    await a.add_keys(shared)
    await b.add_keys(shared)
    await a.add_keys(lost)  # the follower crashed before storing this batch
    await a.add_keys(later)
    await b.add_keys(later)
    with pytest.raises(etsi.Unavailable) as err:
        await a.enc_keys("m", "s", REQ)  # binds the oldest two keys: shared + lost
    assert "not received" in err.value.message
    ((stuck, _),) = a.pool.unacked_bindings()
    assert await a.push_pending() == 1  # cancelled at B, lost key discarded, shared freed
    assert a.pool.unacked_bindings() == []
    with pytest.raises(BindingConflict):
        await b.handle_push(stuck)  # B can never apply it later
    stats = await a.pool_stats()
    assert stats["free"] == 5 and stats["stored"] == 5
    got = await a.enc_keys("m", "s", etsi.EncKeysRequest(number=5, size=256))
    assert {k.key_ID for k in got} == {k for k, _ in shared + later}
    assert await b.dec_keys("m", "s", [k.key_ID for k in got]) == got


async def test_cancel_after_apply_counts_as_acknowledged(tmp_path: Path) -> None:
    pool = KeyPool(tmp_path / "b.db")
    batch = random_batch(1)
    pool.add_keys(batch)
    other = KeyPool(tmp_path / "a.db")
    other.add_keys(batch)
    binding = other.bind(binding_id="6f1c4a52-9a51-4d0e-9d1c-3b1e2f4a5b6c", master_SAE_ID="m",
                         slave_SAE_ID="s", master_kme="A", local_kme="A", sizes=[256])
    assert pool.apply_binding(binding, local_kme="B") == []
    assert pool.cancel_binding(binding.binding_id) is False
    fresh = "0b0c2c1e-1111-4a4a-8b8b-123456789abc"
    assert pool.cancel_binding(fresh) is True
    assert pool.cancel_binding(fresh) is True  # idempotent


async def test_enc_keys_without_a_peer_is_503(tmp_path: Path) -> None:
    lonely = KmeNode(saes=SAES, kme_id="A", peer_kme_id="B", allocator=True,
                     pool=KeyPool(tmp_path / "x"))
    try:
        with pytest.raises(etsi.Unavailable):
            await lonely.enc_keys("m", "s", REQ)
    finally:
        lonely.close()


async def test_the_sweeper_erases_kept_dec_keys_answers_when_their_grace_ends(
    tmp_path: Path,
) -> None:
    grace = 0.5
    a = KmeNode(saes=SAES, kme_id="A", peer_kme_id="B", allocator=True,
                pool=KeyPool(tmp_path / "a.db"))
    b = KmeNode(saes=SAES, kme_id="B", peer_kme_id="A", allocator=False,
                pool=KeyPool(tmp_path / "b.db", redelivery_grace_s=grace))
    a.peer, b.peer = LocalPeer(b), LocalPeer(a)
    stop = asyncio.Event()
    erased = asyncio.Event()
    b.on_redeliverable_erased.append(lambda _count: erased.set())
    sweeper = asyncio.create_task(b.run_sweeper(stop))
    try:
        batch = random_batch(4)
        await a.add_keys(batch)
        await b.add_keys(batch)
        sent = await a.enc_keys("m", "s", REQ)
        ids = [k.key_ID for k in sent]
        before = time.time()
        assert await b.dec_keys("m", "s", ids) == sent
        assert await b.dec_keys("m", "s", ids) == sent  # the same slave, within the grace
        assert (await b.pool_stats())["redeliverable"] == 2
        await asyncio.wait_for(erased.wait(), 30)  # the sweeper woke when they fell due
        assert time.time() >= before + grace
        assert b.pool.redeliverable_ids() == set()
        with pytest.raises(etsi.BadRequest, match="already delivered"):
            await b.dec_keys("m", "s", ids)
        assert set(ids) <= b.pool.delivered_ids()
    finally:
        stop.set()
        await asyncio.wait_for(sweeper, 10)
        a.close()
        b.close()
