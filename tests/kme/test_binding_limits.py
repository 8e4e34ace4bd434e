"""Bound-but-unfetched keys: quotas per SAE pair and per master, a lifetime, and a link room
that counts free keys only (keysource.kme.pool, "Limits on bindings"), on real pools with a
clock moved by hand, and through two in-process KMEs (keysource.kme.node)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from keysource.kme import etsi
from keysource.kme.node import KmeNode, LocalPeer, StaticSaeRegistry
from keysource.kme.pool import (
    EXPIRED_SAE,
    Binding,
    BindingConflict,
    BindingLimits,
    KeyLookupError,
    KeyPool,
    PoolExhausted,
    QuotaExceeded,
)

from .conftest import random_batch
from .test_pool import FakeClock

A, B = "kme-a", "kme-b"
LIMITS = BindingLimits(per_pair=4, per_master=6, ttl_s=600)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def pools(tmp_path: Path, clock: FakeClock) -> Iterator[tuple[KeyPool, KeyPool, list]]:
    """Allocator pool A and follower pool B holding the same 20 link keys."""
    a = KeyPool(tmp_path / "a.sqlite", binding_limits=LIMITS, clock=clock)
    b = KeyPool(tmp_path / "b.sqlite", binding_limits=LIMITS, clock=clock)
    batch = random_batch(20)
    a.add_keys(batch)
    b.add_keys(batch)
    yield a, b, batch
    a.close()
    b.close()


def bind(pool: KeyPool, master: str, slave: str, count: int, master_kme: str = A) -> Binding:
    return pool.bind(binding_id=str(uuid.uuid4()), master_SAE_ID=master, slave_SAE_ID=slave,
                     master_kme=master_kme, local_kme=A, sizes=[256] * count)


def test_the_room_counts_free_keys_only(tmp_path: Path) -> None:
    with KeyPool(tmp_path / "p.sqlite", max_key_count=10, binding_limits=LIMITS) as pool:
        pool.add_keys(random_batch(10))
        assert pool.room() == 0
        bind(pool, "m", "s", 4)
        assert pool.room() == 4 and pool.stats().stored == 10  # bound keys leave room


def test_the_allocator_refuses_a_binding_over_the_pair_quota_whole(pools) -> None:
    a, _, _ = pools
    bind(a, "m", "s", 3, master_kme=B)  # master at B: A holds the slave's copies
    with pytest.raises(QuotaExceeded) as err:
        bind(a, "m", "s", 2, master_kme=B)
    assert (err.value.quota, err.value.bound, err.value.requested, err.value.limit) == (
        "per_pair", 3, 2, 4)
    assert "SAE pair m -> s" in str(err.value)
    assert a.stats().free == 17  # nothing of the refused binding was reserved
    bind(a, "m", "s", 1, master_kme=B)  # up to the limit is fine


def test_the_master_quota_spans_all_its_slaves(pools) -> None:
    a, _, _ = pools
    bind(a, "m", "s1", 4, master_kme=B)
    bind(a, "m", "s2", 2, master_kme=B)
    with pytest.raises(QuotaExceeded) as err:
        bind(a, "m", "s3", 1, master_kme=B)
    assert err.value.quota == "per_master" and "master SAE m" in str(err.value)
    bind(a, "other", "s3", 1, master_kme=B)  # other masters are not affected


def test_the_follower_refuses_over_quota_for_its_slaves_and_cancels_for_ever(pools) -> None:
    a, b, _ = pools
    for _ in range(2):  # master at A: the slave's copies wait at B
        first = bind(a, "m", "s", 2)
        assert b.apply_binding(first, local_kme=B) == []
        a.mark_acked(first.binding_id)
        a.take_bound_for_master("m", "s", 256, 2)
    over = bind(a, "m", "s", 1)  # A holds nothing for the pair any more: only B can tell
    with pytest.raises(QuotaExceeded) as err:
        b.apply_binding(Binding.from_json(over.to_json()), local_kme=B)
    assert err.value.to_json() == {"quota": "per_pair", "master_SAE_ID": "m",
                                   "slave_SAE_ID": "s", "bound": 4, "requested": 1, "limit": 4}
    assert QuotaExceeded.from_json(err.value.to_json()).to_json() == err.value.to_json()
    with pytest.raises(BindingConflict, match="cancelled"):
        b.apply_binding(over, local_kme=B)  # a late retry can never apply it
    free_before = a.stats().free
    a.drop_unshared(over.binding_id, [])  # the allocator frees its keys
    assert a.stats().free == free_before + 1 and a.unacked_bindings() == []


def test_unfetched_bindings_expire_at_both_ends_and_their_keys_are_destroyed(
        pools, clock: FakeClock) -> None:
    a, b, batch = pools
    fetched = bind(a, "m", "s", 2)  # the master fetches; the slave never does
    b.apply_binding(fetched, local_kme=B)
    a.mark_acked(fetched.binding_id)
    sent = a.take_bound_for_master("m", "s", 256, 2)
    leftover = bind(a, "m", "s", 1)  # enc_keys failed after this: ready for the next one
    b.apply_binding(leftover, local_kme=B)
    a.mark_acked(leftover.binding_id)
    stranded = bind(a, "m", "s", 1)  # enc_keys failed before the peer confirmed it
    assert b.next_binding_expiry() == clock.now + 600
    assert a.next_binding_expiry() == clock.now + 600  # the leftover; not the unconfirmed one
    clock.now += 599
    assert a.expire_bindings() == b.expire_bindings() == 0
    assert a.ready_count("m", "s", 256) == 1
    clock.now += 1
    assert a.ready_count("m", "s", 256) == 0  # due: no enc_keys counts on it any more
    with pytest.raises(PoolExhausted):
        a.take_bound_for_master("m", "s", 256, 1)
    # Never served once due, even before a sweep: the slave's dec_keys finds them unknown.
    with pytest.raises(KeyLookupError) as err:
        b.take_for_slave("m", "s", [k.key_ID for k in sent])
    assert err.value.unknown == tuple(k.key_ID for k in sent)
    # A refused dec_keys changes nothing (all or nothing); the sweep destroys them. The
    # stranded binding waits until the follower holds it too ...
    assert b.expire_bindings() == 3 and a.expire_bindings() == 1
    assert a.next_binding_expiry() is None and b.next_binding_expiry() is None
    assert b.apply_binding(stranded, local_kme=B) == []  # the sync loop pushes it
    a.mark_acked(stranded.binding_id)
    # ... then expires at once at the allocator, and a lifetime later at the follower.
    assert a.expire_bindings() == 1 and b.expire_bindings() == 0
    assert a.ready_count("m", "s", 256) == 0
    assert b.next_binding_expiry() == clock.now + 600
    clock.now += 600
    assert b.expire_bindings() == 1
    gone = {k.key_ID for k in sent} | {leftover.keys[0].key_ID, stranded.keys[0].key_ID}
    assert not gone & (a.key_ids() | b.key_ids())
    assert gone <= b.delivered_ids() and gone - {k.key_ID for k in sent} <= a.delivered_ids()
    assert {sae for (sae,) in b._db.execute(
        "SELECT sae FROM delivered WHERE key_id IN (?, ?)",
        [k.key_ID for k in sent])} == {EXPIRED_SAE}
    assert a.add_keys(batch) == b.add_keys(batch) == 0  # a replayed batch revives nothing
    bind(a, "m", "s", 4)  # expired keys no longer count against the quota


def test_a_trailing_newline_in_a_binding_is_refused(pools) -> None:
    a, _, _ = pools
    data = bind(a, "m", "s", 1).to_json()
    for bad in ("s\n", "s\r\n", "s/x", "s s"):
        with pytest.raises(ValueError, match="invalid SAE_ID"):
            Binding.from_json({**data, "slave_SAE_ID": bad})


def test_take_free_is_gone() -> None:
    """Keys leave a pool only through bindings (issue 15, item 6): nothing bypasses them."""
    assert not hasattr(KeyPool, "take_free")


def test_default_quotas_are_shares_of_the_pool(tmp_path: Path) -> None:
    """One master can hold at most an eighth of the pool unfetched: the rest stays for others."""
    with KeyPool(tmp_path / "p.sqlite", max_key_count=3000) as pool:
        assert (pool.binding_limits.per_pair, pool.binding_limits.per_master) == (187, 375)
    assert BindingLimits.for_pool(100_000) == BindingLimits()
    assert BindingLimits.for_pool(100_000).per_pair >= 128 * 32  # one full request fits
    assert BindingLimits.for_pool(5, per_pair=3).per_master == 1


@pytest.mark.parametrize(
    "kwargs", [{"per_pair": 0}, {"per_master": -1}, {"ttl_s": 0}, {"ttl_s": float("nan")}])
def test_bad_limits_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BindingLimits(**kwargs)  # type: ignore[arg-type]


# -- through two KMEs (pair mode, peers called in-process) -----------------------------------


def nodes(tmp_path: Path, limits: BindingLimits, saes_a: list[str],
          saes_b: list[str]) -> tuple[KmeNode, KmeNode]:
    a = KmeNode(kme_id="A", peer_kme_id="B", allocator=True, saes=StaticSaeRegistry(saes_a),
                pool=KeyPool(tmp_path / "a.db", binding_limits=limits))
    b = KmeNode(kme_id="B", peer_kme_id="A", allocator=False, saes=StaticSaeRegistry(saes_b),
                pool=KeyPool(tmp_path / "b.db", binding_limits=limits))
    a.peer, b.peer = LocalPeer(b), LocalPeer(a)
    return a, b


REQ = etsi.EncKeysRequest(number=2, size=256)


async def test_a_slave_known_only_to_the_peer_is_reachable(tmp_path: Path) -> None:
    a, b = nodes(tmp_path, BindingLimits(), ["m"], ["s", "m", "x"])
    try:
        batch = random_batch(8)
        await a.add_keys(batch)
        await b.add_keys(batch)
        sent = await a.enc_keys("m", "s", REQ)  # A asks B, which has "s"
        assert await b.dec_keys("m", "s", [k.key_ID for k in sent]) == sent
        with pytest.raises(etsi.BadRequest, match="unknown slave_SAE_ID ghost") as err:
            await a.enc_keys("m", "ghost", REQ)
        assert "(A)" in err.value.message and "(B)" in err.value.message
        with pytest.raises(etsi.BadRequest, match="not registered at KME A"):
            await b.enc_keys("s", "x", REQ)  # x fetches at A, which does not know it
        assert (await a.pool_stats())["free"] == 6  # the refusals took nothing
    finally:
        a.close()
        b.close()


async def test_a_quota_refusal_at_the_follower_frees_the_allocators_keys(
        tmp_path: Path) -> None:
    a, b = nodes(tmp_path, BindingLimits(per_pair=2, per_master=10), ["m", "s"], ["m", "s"])
    try:
        batch = random_batch(8)
        await a.add_keys(batch)
        await b.add_keys(batch)
        await a.enc_keys("m", "s", REQ)  # s never fetches
        with pytest.raises(etsi.Unavailable, match="per_pair quota") as err:
            await a.enc_keys("m", "s", REQ)
        assert err.value.details[0]["quota"] == "per_pair"
        assert (await a.pool_stats())["free"] == 6 and a.pool.unacked_bindings() == []
        # The other direction is unaffected (its quota is its own pair's).
        sent = await b.enc_keys("s", "m", REQ)
        assert await a.dec_keys("s", "m", [k.key_ID for k in sent]) == sent
    finally:
        a.close()
        b.close()


async def test_the_sweeper_destroys_expired_bindings_at_both_kmes(tmp_path: Path) -> None:
    a, b = nodes(tmp_path, BindingLimits(ttl_s=0.3), ["m", "s"], ["m", "s"])
    stop = asyncio.Event()
    expired = {"A": asyncio.Event(), "B": asyncio.Event()}
    for node in (a, b):
        node.on_bindings_expired.append(lambda _n, e=expired[node.kme_id]: e.set())
    sweepers = [asyncio.create_task(node.run_sweeper(stop)) for node in (a, b)]
    # The allocator's sync loop confirms the binding it made for B's master.
    sweepers.append(asyncio.create_task(a.run_sync(stop, interval_s=0.05)))
    try:
        batch = random_batch(8)
        await a.add_keys(batch)
        await b.add_keys(batch)
        to_s = await a.enc_keys("m", "s", REQ)  # held at B for s
        to_m = await b.enc_keys("s", "m", REQ)  # held at A for m
        await asyncio.wait_for(asyncio.gather(expired["A"].wait(), expired["B"].wait()), 30)
        for node, ids in ((b, to_s), (a, to_m)):
            stats = await node.pool_stats()
            assert stats["bound_master"] + stats["bound_slave"] == 0
            assert {k.key_ID for k in ids} <= node.pool.delivered_ids()
        with pytest.raises(etsi.BadRequest, match="unknown or already delivered"):
            await b.dec_keys("m", "s", [k.key_ID for k in to_s])
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*sweepers), 10)
        a.close()
        b.close()


# -- the flags ------------------------------------------------------------------------------


def test_the_flags_are_documented_and_bad_values_refused(tmp_path: Path) -> None:
    from .test_cli import run

    for command in ("pair", "serve"):
        text = run(command, "--help").stdout
        for flag in ("--max-bound-per-pair", "--max-bound-per-master", "--binding-ttl"):
            assert flag in text, (command, flag)
    for flag, value in (("--max-bound-per-pair", "0"), ("--max-bound-per-master", "-5"),
                        ("--binding-ttl", "0"), ("--binding-ttl", "nan")):
        result = run("pair", "--data", str(tmp_path), "--link", "none", "--port-a", "0",
                     "--port-b", "0", flag, value)
        assert result.returncode == 2, (flag, value, result.stdout)
        assert f"{flag} must be" in result.stderr, result.stderr
        assert not (tmp_path / "pki").exists()  # refused before anything was created
