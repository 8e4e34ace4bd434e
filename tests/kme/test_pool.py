"""The key pool: once-only delivery, bindings, no loss or double delivery under races or kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from keysource.kme.pool import (
    BadBatch,
    Binding,
    BindingConflict,
    BindingLimits,
    KeyLookupError,
    KeyPool,
    PoolExhausted,
    PoolKey,
)

from .conftest import random_batch

A, B = "kme-a", "kme-b"


def take_as_master(pool: KeyPool, number: int, master: str = "m") -> list[PoolKey]:
    """enc_keys at the allocator, the only way keys leave a pool for a master: bind free keys
    to (master, s), acknowledge (the peer holds the binding), hand them out."""
    binding = pool.bind(binding_id=str(uuid.uuid4()), master_SAE_ID=master, slave_SAE_ID="s",
                        master_kme=A, local_kme=A, sizes=[256] * number)
    pool.mark_acked(binding.binding_id)
    return pool.take_bound_for_master(master, "s", 256, number)


@pytest.fixture
def pool(tmp_path: Path) -> KeyPool:
    # Quotas as large as the pool: these tests take whole pools through one master.
    p = KeyPool(tmp_path / "pool.sqlite", max_key_count=50,
                binding_limits=BindingLimits(per_pair=100, per_master=100))
    yield p
    p.close()


def test_keys_are_handed_out_once_oldest_first(pool: KeyPool) -> None:
    batch = random_batch(10)
    assert pool.add_keys(batch) == 10
    first = take_as_master(pool, 4)
    assert [(k.key_ID, k.key) for k in first] == batch[:4]
    rest = take_as_master(pool, 6)
    assert {k.key_ID for k in rest} == {k for k, _ in batch[4:]}
    with pytest.raises(PoolExhausted):
        take_as_master(pool, 1)
    assert pool.delivered_ids() == {k for k, _ in batch}


def test_add_is_idempotent_and_never_revives_delivered_keys(pool: KeyPool) -> None:
    batch = random_batch(3)
    pool.add_keys(batch)
    assert pool.add_keys(batch) == 0  # a replayed batch changes nothing
    taken = take_as_master(pool, 1)
    assert pool.add_keys(batch) == 0  # ... and never brings back the delivered key
    assert taken[0].key_ID not in pool.key_ids()
    with pytest.raises(BadBatch):
        pool.add_keys([(batch[1][0], os.urandom(32))])  # same ID, other bytes


def test_a_bad_batch_is_rejected_whole(pool: KeyPool) -> None:
    good = random_batch(2)
    for bad in ([("not-a-uuid", os.urandom(32))], [(str(uuid.uuid4()), os.urandom(31))]):
        with pytest.raises(BadBatch):
            pool.add_keys([*good, *bad])
        assert pool.stats().stored == 0


def test_room_follows_max_key_count(pool: KeyPool) -> None:
    assert pool.room() == 50
    pool.add_keys(random_batch(30))
    assert pool.room() == 20
    pool.add_keys(random_batch(30))  # a whole batch is kept so both ends stay identical
    assert pool.room() == 0 and pool.stats().stored == 60


def make_pair(tmp_path: Path) -> tuple[KeyPool, KeyPool, list[tuple[str, bytes]]]:
    a = KeyPool(tmp_path / "a.sqlite")
    b = KeyPool(tmp_path / "b.sqlite")
    batch = random_batch(20)
    a.add_keys(batch)
    b.add_keys(batch)
    return a, b, batch


def test_binding_delivers_the_same_keys_to_master_and_slave(tmp_path: Path) -> None:
    a, b, _ = make_pair(tmp_path)
    binding = a.bind(binding_id=str(uuid.uuid4()), master_SAE_ID="m", slave_SAE_ID="s",
                     master_kme=A, local_kme=A, sizes=[256, 512, 64])
    assert len(binding.keys) == 3 and [len(k.parts) for k in binding.keys] == [1, 2, 1]
    assert b.apply_binding(Binding.from_json(binding.to_json()), local_kme=B) == []
    assert a.ready_count("m", "s", 512) == 0  # not confirmed by the peer yet
    a.mark_acked(binding.binding_id)
    assert a.ready_count("m", "s", 512) == 1
    sent = a.take_bound_for_master("m", "s", 512, 1)
    got = b.take_for_slave("m", "s", [sent[0].key_ID])
    assert got == sent and len(sent[0].key) == 64
    sent_small = a.take_bound_for_master("m", "s", 64, 1)
    assert b.take_for_slave("m", "s", [sent_small[0].key_ID]) == sent_small
    assert len(sent_small[0].key) == 8


def test_slave_side_refuses_other_pairs_and_unknown_ids(tmp_path: Path) -> None:
    a, b, batch = make_pair(tmp_path)
    binding = a.bind(binding_id=str(uuid.uuid4()), master_SAE_ID="m", slave_SAE_ID="s",
                     master_kme=A, local_kme=A, sizes=[256])
    b.apply_binding(binding, local_kme=B)
    key_id = binding.keys[0].key_ID
    free_id = batch[-1][0]
    with pytest.raises(KeyLookupError) as err:
        b.take_for_slave("m", "intruder", [key_id])
    assert err.value.foreign == (key_id,)
    with pytest.raises(KeyLookupError) as err:
        b.take_for_slave("m", "s", [key_id, free_id])  # free keys were never issued
    assert err.value.unknown == (free_id,)
    with pytest.raises(KeyLookupError):
        a.take_for_slave("m", "s", [key_id])  # the master side never serves dec_keys
    with pytest.raises(KeyLookupError) as err:  # named twice: not handed out twice
        b.take_for_slave("m", "s", [key_id, key_id])
    assert err.value.unknown == (key_id,)
    assert len(b.take_for_slave("m", "s", [key_id])) == 1  # nothing was taken before


def test_apply_binding_waits_for_missing_keys_and_is_idempotent(tmp_path: Path) -> None:
    a, b, _ = make_pair(tmp_path)
    late = random_batch(2)
    a.add_keys(late)
    take_as_master(a, 20, master="drain")  # only the late keys are free at A now
    binding = a.bind(binding_id=str(uuid.uuid4()), master_SAE_ID="m", slave_SAE_ID="s",
                     master_kme=B, local_kme=A, sizes=[512])
    assert sorted(b.apply_binding(binding, local_kme=B)) == sorted(k for k, _ in late)
    assert b.stats().bound_master == 0  # nothing applied
    b.add_keys(late)
    assert b.apply_binding(binding, local_kme=B) == []
    assert b.apply_binding(binding, local_kme=B) == []
    assert b.stats().bound_master == 2  # master at B: its SAE fetches with enc_keys there
    assert b.ready_count("m", "s", 512) == 1


def test_conflicting_binding_is_refused(tmp_path: Path) -> None:
    a, b, _ = make_pair(tmp_path)
    first = a.bind(binding_id=str(uuid.uuid4()), master_SAE_ID="m", slave_SAE_ID="s",
                   master_kme=A, local_kme=A, sizes=[256])
    b.apply_binding(first, local_kme=B)
    clash = Binding(str(uuid.uuid4()), "m2", "s2", A, first.keys)
    with pytest.raises(BindingConflict):
        b.apply_binding(clash, local_kme=B)


def test_bind_is_all_or_nothing_and_idempotent(tmp_path: Path) -> None:
    a, _, _ = make_pair(tmp_path)
    with pytest.raises(PoolExhausted):
        a.bind(binding_id=str(uuid.uuid4()), master_SAE_ID="m", slave_SAE_ID="s",
               master_kme=A, local_kme=A, sizes=[256] * 21)
    assert a.stats().free == 20
    bid = str(uuid.uuid4())
    one = a.bind(binding_id=bid, master_SAE_ID="m", slave_SAE_ID="s", master_kme=A,
                 local_kme=A, sizes=[256])
    again = a.bind(binding_id=bid, master_SAE_ID="m", slave_SAE_ID="s", master_kme=A,
                   local_kme=A, sizes=[256])
    assert one == again and a.stats().free == 19


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("keys"),
        lambda d: d.update(binding_id="x"),
        lambda d: d["keys"][0].update(size=512),  # parts do not match the size
        lambda d: d["keys"][0].update(key_ID=str(uuid.uuid4())),
        lambda d: d.update(master_SAE_ID=""),
        lambda d: d["keys"].append(dict(d["keys"][0])),  # one pool key in two keys
    ],
)
def test_malformed_bindings_are_rejected(tmp_path: Path, mutate: object) -> None:
    a, _, _ = make_pair(tmp_path)
    data = a.bind(binding_id=str(uuid.uuid4()), master_SAE_ID="m", slave_SAE_ID="s",
                  master_kme=A, local_kme=A, sizes=[256]).to_json()
    mutate(data)  # type: ignore[operator]
    with pytest.raises(ValueError):
        Binding.from_json(data)


def test_threads_racing_for_keys_never_share_one(tmp_path: Path) -> None:
    path = tmp_path / "pool.sqlite"
    batch = random_batch(700)
    with KeyPool(path) as p:
        p.add_keys(batch)
    received: list[list[str]] = [[] for _ in range(8)]
    barrier = threading.Barrier(8)

    def worker(index: int) -> None:
        with KeyPool(path) as mine:
            barrier.wait(timeout=30)
            for _ in range(40):  # 8 threads x 40 takes x 1-3 keys = 600 keys, all racing
                try:
                    received[index] += [
                        k.key_ID for k in take_as_master(mine, 1 + index % 3, f"t{index}")]
                except PoolExhausted:
                    return

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    got = [k for r in received for k in r]
    assert len(got) == len(set(got)), "a key was handed out twice"
    with KeyPool(path) as p:
        left = p.key_ids()
    assert set(got) | left == {k for k, _ in batch} and not set(got) & left
    assert len(got) == 600


def worker_cmd(path: Path, per_take: int, master: str = "worker") -> list[str]:
    return [sys.executable, "-m", "tests.kme._pool_worker", str(path), str(per_take), master]


def test_processes_racing_for_keys_never_share_one(tmp_path: Path) -> None:
    path = tmp_path / "pool.sqlite"
    batch = random_batch(1500)
    with KeyPool(path) as p:
        p.add_keys(batch)
    procs = [subprocess.Popen(worker_cmd(path, n, f"w{n}"), stdout=subprocess.PIPE, text=True)
             for n in (1, 2, 3, 5)]
    outputs = [p.communicate(timeout=120)[0].split() for p in procs]
    got = [k for out in outputs for k in out if k != "done"]
    assert all(out and out[-1] == "done" for out in outputs)
    assert len(got) == len(set(got)), "a key was handed out twice"
    with KeyPool(path) as p:
        left = p.key_ids()
    assert set(got) | left == {k for k, _ in batch}
    assert len(left) < 5  # only what no worker's take size fitted any more


@pytest.mark.slow
def test_kill_9_while_serving_loses_nothing_and_serves_nothing_twice(tmp_path: Path) -> None:
    """kill -9 a process taking keys in a loop; compare what it printed with what remains.

    A key is "delivered" when the transaction deleting it commits. Between that commit
    and the worker printing the IDs lies one take (``per_take`` keys) that the reader may not
    see: those IDs are in the delivered journal, never in the pool, never served again.
    """
    path = tmp_path / "pool.sqlite"
    batch = random_batch(8000)
    original = {k for k, _ in batch}
    with KeyPool(path) as p:
        p.add_keys(batch)
    per_take = 3
    seen: set[str] = set()
    for round_ in range(3):
        # Unbuffered: communicate() reads the raw pipe, so nothing may sit in a buffer.
        proc = subprocess.Popen(worker_cmd(path, per_take), stdout=subprocess.PIPE, bufsize=0)
        assert proc.stdout is not None
        first = proc.stdout.readline()  # it is serving now
        time.sleep(0.02 + 0.04 * round_)
        os.kill(proc.pid, signal.SIGKILL)
        out = (first + proc.communicate(timeout=30)[0]).decode()
        assert "done" not in out, "the worker finished before being killed; use more keys"
        received = [line for line in out.split("\n")[:-1] if line]  # last line may be cut
        with KeyPool(path) as p:
            remaining, journal = p.key_ids(), p.delivered_ids()
        assert len(received) == len(set(received)) and not set(received) & seen
        seen.update(received)
        assert not seen & remaining, "a received key is still in the pool"
        assert seen <= journal
        assert remaining | journal == original, "a key vanished without being delivered"
        assert not remaining & journal
        # At most one take per kill was committed but not yet printed.
        assert len(journal - seen) <= per_take * (round_ + 1)
    # A fresh worker drains the rest: nothing it gets was received before.
    out = subprocess.run(worker_cmd(path, 1), capture_output=True, text=True, timeout=120).stdout
    after = [k for k in out.split() if k != "done"]
    assert after and not set(after) & seen
    with KeyPool(path) as p:
        assert p.key_ids() == set() and p.delivered_ids() == original


# -- re-delivery to the same slave SAE within the grace ---------------------------------------


class FakeClock:
    """The pool's wall clock, moved by hand (no sleeping through a grace period)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def bound_at_slave(tmp_path: Path, clock: FakeClock, grace: float = 600,
                   sizes: tuple[int, ...] = (256, 512)) -> tuple[KeyPool, list, list]:
    """A slave-side pool (KME B) holding keys the master m got for slave s; returns
    (pool B, the master's keys, the link batch)."""
    a = KeyPool(tmp_path / "a.sqlite")
    b = KeyPool(tmp_path / "b.sqlite", redelivery_grace_s=grace, clock=clock)
    batch = random_batch(10)
    a.add_keys(batch)
    b.add_keys(batch)
    binding = a.bind(binding_id=str(uuid.uuid4()), master_SAE_ID="m", slave_SAE_ID="s",
                     master_kme=A, local_kme=A, sizes=list(sizes))
    b.apply_binding(Binding.from_json(binding.to_json()), local_kme=B)
    a.mark_acked(binding.binding_id)
    sent = [a.take_bound_for_master("m", "s", size, 1)[0] for size in sizes]
    a.close()
    return b, sent, batch


def test_the_same_slave_gets_the_same_keys_again_within_the_grace(tmp_path: Path) -> None:
    clock = FakeClock()
    b, sent, _ = bound_at_slave(tmp_path, clock)
    ids = [k.key_ID for k in sent]
    assert b.take_for_slave("m", "s", ids) == sent
    stored_after_first = b.key_ids()
    clock.now += 599
    assert b.take_for_slave("m", "s", ids) == sent  # the answer was lost: ask again
    assert b.take_for_slave("m", "s", ids[::-1]) == sent[::-1]  # in the order asked
    assert b.key_ids() == stored_after_first  # nothing else was taken
    assert b.redeliverable_ids() == set(ids) and b.stats().redeliverable == 2


def test_other_saes_and_other_masters_are_refused_as_for_any_delivered_key(
        tmp_path: Path) -> None:
    clock = FakeClock()
    b, sent, _ = bound_at_slave(tmp_path, clock)
    ids = [k.key_ID for k in sent]
    b.take_for_slave("m", "s", ids)
    for master, slave in (("m", "intruder"), ("intruder", "s"), ("s", "m")):
        with pytest.raises(KeyLookupError) as err:
            b.take_for_slave(master, slave, ids)
        # Exactly what a delivered key always answered: unknown (400), nothing revealed.
        assert err.value.unknown == tuple(ids) and err.value.foreign == ()
    assert b.take_for_slave("m", "s", ids) == sent  # ... and the slave still gets them


def test_a_repeat_mixed_with_fresh_keys_is_all_or_nothing(tmp_path: Path) -> None:
    clock = FakeClock()
    b, sent, batch = bound_at_slave(tmp_path, clock)
    first, second = sent
    b.take_for_slave("m", "s", [first.key_ID])
    with pytest.raises(KeyLookupError):
        b.take_for_slave("m", "s", [first.key_ID, batch[-1][0]])  # a free key: unknown
    assert b.redeliverable_ids() == {first.key_ID}  # the failed call changed nothing
    assert b.take_for_slave("m", "s", [second.key_ID, first.key_ID]) == [second, first]
    assert b.redeliverable_ids() == {first.key_ID, second.key_ID}


def test_after_the_grace_the_material_is_gone_and_replays_stay_blocked(tmp_path: Path) -> None:
    clock = FakeClock()
    b, sent, batch = bound_at_slave(tmp_path, clock)
    ids = [k.key_ID for k in sent]
    b.take_for_slave("m", "s", ids)
    clock.now += 300
    b.take_for_slave("m", "s", ids)  # a repeat does not restart the grace
    assert b.next_redelivery_expiry() == clock.now - 300 + 600
    clock.now += 300
    assert b.sweep_redeliverable() == 2
    assert b.redeliverable_ids() == set() and b.next_redelivery_expiry() is None
    with pytest.raises(KeyLookupError) as err:
        b.take_for_slave("m", "s", ids)
    assert err.value.unknown == tuple(ids)
    raw = sqlite3.connect(b.path)
    assert raw.execute("SELECT COUNT(*) FROM redeliverable").fetchone() == (0,)
    raw.close()
    # The journal still knows every pool key of them: a replayed link batch revives none.
    parts = {p for p, _ in batch[:3]}  # 256 bits: one pool key; 512 bits: two
    assert parts <= b.delivered_ids()
    assert b.add_keys(batch) == 0 and not parts & b.key_ids()


def test_expired_answers_are_never_served_even_before_a_sweep(tmp_path: Path) -> None:
    clock = FakeClock()
    b, sent, _ = bound_at_slave(tmp_path, clock)
    b.take_for_slave("m", "s", [sent[0].key_ID])
    clock.now += 600
    with pytest.raises(KeyLookupError):
        b.take_for_slave("m", "s", [sent[0].key_ID])
    assert b.take_for_slave("m", "s", [sent[1].key_ID]) == [sent[1]]
    assert b.redeliverable_ids() == {sent[1].key_ID}  # a dec_keys sweeps on the way


def test_a_grace_of_zero_is_strict_once_only_delivery(tmp_path: Path) -> None:
    clock = FakeClock()
    b, sent, _ = bound_at_slave(tmp_path, clock, grace=0)
    ids = [k.key_ID for k in sent]
    assert b.take_for_slave("m", "s", ids) == sent
    assert b.redeliverable_ids() == set()
    with pytest.raises(KeyLookupError):
        b.take_for_slave("m", "s", ids)
    with pytest.raises(ValueError, match="grace"):
        KeyPool(tmp_path / "c.sqlite", redelivery_grace_s=-1)


def test_a_shorter_grace_after_a_restart_applies_to_answers_already_kept(
        tmp_path: Path) -> None:
    clock = FakeClock()
    b, sent, _ = bound_at_slave(tmp_path, clock)
    b.take_for_slave("m", "s", [sent[0].key_ID])
    b.close()
    clock.now += 120
    with KeyPool(tmp_path / "b.sqlite", redelivery_grace_s=60, clock=clock) as again:
        assert again.sweep_redeliverable() == 1
        with pytest.raises(KeyLookupError):
            again.take_for_slave("m", "s", [sent[0].key_ID])


def test_the_master_side_keeps_nothing(tmp_path: Path) -> None:
    """enc_keys cannot be asked again by key_ID, and a master killed after it sent nothing
    under those keys: it asks for fresh ones, so there is nothing to keep (module doc)."""
    clock = FakeClock()
    b, _, _ = bound_at_slave(tmp_path, clock)
    with KeyPool(tmp_path / "a.sqlite", clock=clock) as a:
        assert a.redeliverable_ids() == set() and a.stats().redeliverable == 0


def _counted(pool: KeyPool) -> int:
    with sqlite3.connect(pool.path) as db:
        return db.execute("SELECT COUNT(*) FROM keys WHERE bound_to IS NULL").fetchone()[0]


def test_the_free_count_follows_every_change_and_other_writers(tmp_path: Path) -> None:
    """free_count is kept up to date rather than counted each time (a relay hop asks for it
    after every draw and claim): after each kind of write, and after another connection
    (a test filling the pool, as its link would) changed the file, it equals a fresh count."""
    a, b, batch = make_pair(tmp_path)

    def same() -> None:
        assert a.free_count() == _counted(a) and b.free_count() == _counted(b)

    same()
    binding = a.bind(binding_id=str(uuid.uuid4()), master_SAE_ID="m", slave_SAE_ID="s",
                     master_kme=A, local_kme=A, sizes=[256, 512])
    same()
    assert b.apply_binding(binding, local_kme=B) == []
    same()
    a.mark_acked(binding.binding_id)
    sent = a.take_bound_for_master("m", "s", 512, 1)
    b.take_for_slave("m", "s", [sent[0].key_ID])
    same()
    assert a.add_keys(batch[:3] + random_batch(4)) == 4  # three already held
    same()
    with KeyPool(a.path) as other:  # another writer on the same file
        other.add_keys(random_batch(5))
    same()
    unshared = a.bind(binding_id=str(uuid.uuid4()), master_SAE_ID="m", slave_SAE_ID="s",
                      master_kme=A, local_kme=A, sizes=[256, 256])
    same()
    a.drop_unshared(unshared.binding_id, [unshared.keys[0].key_ID])
    same()
    assert a.discard_free({batch[-1][0]}) == 1
    same()
    with pytest.raises(PoolExhausted):
        a.bind(binding_id=str(uuid.uuid4()), master_SAE_ID="m", slave_SAE_ID="s",
               master_kme=A, local_kme=A, sizes=[256] * 1_000)
    same()
