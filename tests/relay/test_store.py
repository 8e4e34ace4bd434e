"""Each store directly (SQLite and Redis, see tests/relay/stores.py): grouped writes, de-dup,
quotas, TTL, own-queue acks, atomic prekeys, file-stream spool."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from relay import wire
from relay.store import (
    BindStatus,
    BundleRefused,
    EnqueueStatus,
    SqliteStore,
    Store,
    StoreLimits,
    make_store,
)
from tests.relay.stores import StoreFactory, batches


async def open_store(stores: StoreFactory, **limits: float) -> Store:
    store = await stores.open(StoreLimits(**limits))  # type: ignore[arg-type]
    for handle in ("alice", "bob", "carol"):
        await store.bind_identity(handle, handle.encode())
    return store


async def send(store: Store, sender: str, to: str, msg: str, body: bytes = b"x"):  # type: ignore[no-untyped-def]
    return await store.enqueue(store.new_envelope(sender, to, msg, body))


async def test_bind_identity(stores: StoreFactory) -> None:
    store = await open_store(stores)
    assert await store.bind_identity("dave", b"k1") is BindStatus.NEW
    assert await store.bind_identity("dave", b"k1") is BindStatus.MATCH
    assert await store.bind_identity("dave", b"k2") is BindStatus.MISMATCH
    await store.close()


async def test_concurrent_sends_share_commits_and_survive_reopen(stores: StoreFactory) -> None:
    store = await open_store(stores)
    before = batches(store)
    results = await asyncio.gather(*(
        store.enqueue(store.new_envelope("alice", "bob", f"{i:032x}", b"b"))
        for i in range(2000)))
    assert all(r.status is EnqueueStatus.STORED for r in results)
    # Grouped: far fewer commits than sends (the writer takes what queued meanwhile).
    assert batches(store) - before < 500
    seqs = [r.envelope.seq for r in results]
    assert seqs == sorted(seqs) and len(set(seqs)) == 2000
    await store.close()
    store = await stores.open()
    assert await store.queue_depth("bob") == 2000 and store.total_queue_depth() == 2000
    fresh = store.new_envelope("alice", "bob", "f" * 32, b"b")
    assert fresh.seq > max(seqs)  # numbers never reused after a restart
    await store.close()


async def test_duplicates_dropped_even_after_ack(stores: StoreFactory) -> None:
    store = await open_store(stores)
    first = await send(store, "alice", "bob", "a" * 32)
    assert (await send(store, "alice", "bob", "a" * 32)).status is EnqueueStatus.DUPLICATE
    assert (await send(store, "carol", "bob", "a" * 32)).status is EnqueueStatus.STORED
    assert await store.ack("bob", [first.envelope.seq]) == 1
    assert (await send(store, "alice", "bob", "a" * 32)).status is EnqueueStatus.DUPLICATE
    await store.close()


async def test_repeats_within_one_commit_and_acks_in_the_same_commit(stores: StoreFactory) -> None:
    store = await open_store(stores)
    first = store.new_envelope("alice", "bob", "9" * 32, b"one")
    again = store.new_envelope("alice", "bob", "9" * 32, b"one")
    other = store.new_envelope("carol", "bob", "8" * 32, b"two")
    futures = [asyncio.ensure_future(store.enqueue(e)) for e in (first, again, other)]
    await asyncio.sleep(0)  # the three are queued in this order before the ack
    store.ack_nowait("bob", [other.seq])  # queued behind its send: may share its commit
    results = await asyncio.gather(*futures)
    assert [r.status for r in results] == [EnqueueStatus.STORED, EnqueueStatus.DUPLICATE,
                                           EnqueueStatus.STORED]
    assert [e.msg for e in await store.pending("bob", 10)] == ["9" * 32]
    assert await store.queue_depth("bob") == 1 and store.total_queue_depth() == 1
    # Acked (perhaps before its commit: then written as a tombstone only), still a repeat.
    assert (await send(store, "carol", "bob", "8" * 32)).status is EnqueueStatus.DUPLICATE
    await store.close()
    store = await stores.open()
    assert [e.msg for e in await store.pending("bob", 10)] == ["9" * 32]
    assert store.total_queue_depth() == 1
    await store.close()


async def test_data_dir_from_the_queue_and_seen_schema_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(tmp_path / "s.db")
    db.executescript("""
        CREATE TABLE handles(handle TEXT PRIMARY KEY, identity BLOB NOT NULL,
                             created INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE queue(seq INTEGER PRIMARY KEY AUTOINCREMENT, recipient TEXT NOT NULL,
                           sender TEXT NOT NULL, msg TEXT NOT NULL, body BLOB NOT NULL,
                           ts INTEGER NOT NULL);
        CREATE TABLE seen(id INTEGER PRIMARY KEY, sender TEXT NOT NULL, msg TEXT NOT NULL,
                          ts INTEGER NOT NULL);
        CREATE UNIQUE INDEX seen_once ON seen(sender, msg);
    """)
    now = int(time.time() * 1000)
    db.executemany("INSERT INTO handles VALUES (?, ?, ?)",
                   [("alice", b"alice", now), ("bob", b"bob", now)])
    db.execute("INSERT INTO queue VALUES (7, 'bob', 'alice', ?, x'0102', ?)", ("7" * 32, now))
    db.execute("INSERT INTO queue VALUES (41, 'bob', 'alice', ?, x'03', ?)", ("4" * 32, now))
    db.execute("DELETE FROM queue WHERE seq=41")  # acked; its id stays in seen
    db.executemany("INSERT INTO seen(sender, msg, ts) VALUES ('alice', ?, ?)",
                   [("7" * 32, now), ("4" * 32, now)])
    db.commit()
    db.close()
    store = SqliteStore(tmp_path / "s.db", synchronous="NORMAL")
    await store.open()
    assert [(e.seq, e.body) for e in await store.pending("bob", 10)] == [(7, b"\x01\x02")]
    assert await store.queue_depth("bob") == 1
    assert (await send(store, "alice", "bob", "4" * 32)).status is EnqueueStatus.DUPLICATE
    assert (await send(store, "alice", "bob", "5" * 32)).envelope.seq > 41
    await store.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux-only")
async def test_the_sqlite_writer_thread_runs_nicer_than_the_relay(tmp_path: Path) -> None:
    """Deliveries wait on the event loop, not on the writer (relay/store/sqlite.py): the
    writer thread alone is made nicer, by the configured steps, and 0 leaves it as it was."""
    me = threading.get_native_id()
    base = os.getpriority(os.PRIO_PROCESS, me)
    for steps, name in ((5, "a"), (0, "b"), (19, "c")):
        store = make_store(None, tmp_path / name, StoreLimits(), sync="NORMAL",
                           writer_nice=steps)
        assert isinstance(store, SqliteStore)
        (tmp_path / name).mkdir()
        await store.open()
        try:
            assert store.writer_tid is not None and store.writer_tid != me
            assert os.getpriority(os.PRIO_PROCESS, store.writer_tid) == min(19, base + steps)
            assert os.getpriority(os.PRIO_PROCESS, me) == base  # the loop's thread: unchanged
            await send(store, "alice", "bob", "1" * 32)  # still commits (unknown recipient)
        finally:
            await store.close()
    with pytest.raises(ValueError, match="writer_nice"):
        SqliteStore(tmp_path / "d.db", writer_nice=40)


async def test_ack_only_touches_own_queue(stores: StoreFactory) -> None:
    store = await open_store(stores)
    result = await send(store, "alice", "bob", "b" * 32)
    assert await store.ack("carol", [result.envelope.seq]) == 0
    assert [e.msg for e in await store.pending("bob", 10)] == ["b" * 32]
    assert await store.pending("carol", 10) == []
    await store.close()


async def test_unknown_recipient_and_quotas(stores: StoreFactory) -> None:
    # One sender may fill the whole queue here (shares: tests/relay/test_fair_quotas.py).
    store = await open_store(stores, quota_messages=3, quota_bytes=1000, sender_share=1.0)
    assert (await send(store, "alice", "zed", "c" * 32)).status is EnqueueStatus.UNKNOWN_RECIPIENT
    for i in range(3):
        assert (await send(store, "alice", "bob", f"{i:032x}")).status is EnqueueStatus.STORED
    assert (await send(store, "alice", "bob", "d" * 32)).status is EnqueueStatus.QUOTA_EXCEEDED
    assert (await send(store, "alice", "bob", f"{0:032x}")).status is EnqueueStatus.DUPLICATE
    pending = await store.pending("bob", 10)
    await store.ack("bob", [pending[0].seq])
    assert (await send(store, "alice", "bob", "d" * 32)).status is EnqueueStatus.STORED
    big = b"x" * 900
    assert (await send(store, "alice", "carol", "e" * 32, big)).status is EnqueueStatus.STORED
    assert (await send(store, "alice", "carol", "f" * 32, big)).status is \
        EnqueueStatus.QUOTA_EXCEEDED
    await store.close()


async def test_ttl_expiry(stores: StoreFactory) -> None:
    store = await open_store(stores, ttl_seconds=0.2)
    await send(store, "alice", "bob", "1" * 32)
    assert await store.expire() == 0
    time.sleep(0.3)
    await send(store, "alice", "bob", "2" * 32)  # fresh: stays
    assert await store.expire() == 1
    assert [e.msg for e in await store.pending("bob", 10)] == ["2" * 32]
    assert await store.queue_depth("bob") == 1 and store.total_queue_depth() == 1
    await store.close()


def _bundle(n: int, start: int = 0) -> wire.PrekeyBundle:
    sig = b"s" * wire.HYBRID_SIGNATURE_BYTES
    return wire.PrekeyBundle(b"i" * wire.HYBRID_PUBLIC_KEY_BYTES, b"spk", sig,
                             tuple(wire.OneTimePrekey(i, b"k%d" % i, sig)
                                   for i in range(start, start + n)))


async def test_take_bundle_is_atomic_under_concurrency(stores: StoreFactory) -> None:
    store = await open_store(stores, max_one_time_stored=50)
    assert await store.take_bundle("bob") is None
    assert await store.put_bundle("bob", _bundle(40)) == 40
    taken = await asyncio.gather(*(store.take_bundle("bob") for _ in range(60)))
    ids = [t.bundle.one_time[0].key_id for t in taken if t and t.bundle.one_time]
    assert sorted(ids) == list(range(40))
    assert sum(1 for t in taken if t and not t.bundle.one_time) == 20
    with pytest.raises(BundleRefused):
        await store.put_bundle("bob", _bundle(51))
    assert await store.prekey_count("bob") == 0
    await store.close()


async def test_wait_for_room_returns_once_the_writer_catches_up(stores: StoreFactory) -> None:
    store = await stores.open(max_backlog=10)
    await store.bind_identity("bob", b"bob")
    futures = [asyncio.ensure_future(store.enqueue(
        store.new_envelope("alice", "bob", f"{i:032x}", b"b"))) for i in range(500)]
    await asyncio.sleep(0)  # all queued: the writer is behind
    await asyncio.wait_for(store.wait_for_room(), 5)
    assert not store.behind()
    assert all(r.status is EnqueueStatus.STORED for r in await asyncio.gather(*futures))
    await store.close()


async def test_file_stream_registration_and_spool(stores: StoreFactory) -> None:
    from relay.store import SpoolStatus, StreamStatus

    store = await open_store(stores, sender_share=1.0)  # one sender fills the spool
    now = int(time.time() * 1000)
    later = now + 60_000
    s1, s2 = b"\x01" * 16, b"\x02" * 16
    assert await store.register_stream(s1, "alice", "bob", now, later, 2) is StreamStatus.NEW
    assert await store.register_stream(s1, "alice", "bob", now, later, 2) is StreamStatus.SAME
    assert await store.register_stream(s1, "bob", "alice", now, later, 2) is StreamStatus.TAKEN
    assert await store.register_stream(s2, "alice", "carol", now, later, 2) is StreamStatus.NEW
    assert await store.register_stream(b"\x03" * 16, "alice", "bob", now, later,
                                       2) is StreamStatus.TOO_MANY
    # Spool: order by row, retransmission stored once, quota per recipient, 2^64-1 seqs.
    big = 2**64 - 1
    results = [await store.spool("bob", s1, seq, bytes([seq % 256]) * 100, now, later, 350)
               for seq in (5, 3, 5, big, 9)]
    assert [r.status for r in results] == [SpoolStatus.STORED, SpoolStatus.STORED,
                                           SpoolStatus.DUPLICATE, SpoolStatus.STORED,
                                           SpoolStatus.QUOTA_EXCEEDED]
    assert results[0].row < results[1].row < results[3].row
    assert (await store.spool("bob", b"\x09" * 16, 1, b"x", now, later, 10**9)).status is \
        SpoolStatus.UNKNOWN_STREAM
    assert await store.spool_bytes_of("bob") == 300 and store.spool_bytes() == 300
    page = await store.spool_page("bob", 0, 2, now)
    assert [f.seq for f in page.frames] == [5, 3] and page.top == results[3].row
    rest = await store.spool_page("bob", page.frames[-1].row, 10, now)
    assert [f.seq for f in rest.frames] == [big]
    # Acks only ever delete what is held for the acking recipient, on that stream.
    assert await store.spool_ack("alice", s1, [5, 3]) == 0
    assert await store.spool_ack("bob", s2, [5, 3]) == 0
    assert await store.spool_ack("bob", s1, [5, 77]) == 1
    assert store.spool_bytes() == 200
    await store.close()
    store = await stores.open()
    assert store.spool_bytes() == 200
    assert {r.stream for r in await store.file_streams(now)} == {s1, s2}
    assert await store.close_stream(s1) == 2 and store.spool_bytes() == 0
    # Expiry: frames and registrations past their time go, counted.
    assert (await store.spool("carol", s2, 1, b"y" * 10, now, now + 1, 10**9)).status is \
        SpoolStatus.STORED
    assert (await store.spool_page("carol", 0, 10, now + 5)).frames == []  # hidden once expired
    dropped, gone = await store.expire_spool(later + 1)
    assert (dropped, gone) == (1, [s2]) and store.spool_bytes() == 0
    assert await store.file_streams(now) == []
    await store.close()


async def test_acks_grouped_in_one_commit_count_as_if_one_by_one(stores: StoreFactory) -> None:
    store = await open_store(stores)
    results = await asyncio.gather(*(send(store, "alice", "bob", f"{i:032x}", b"xyz")
                                     for i in range(300)))
    carol = await send(store, "alice", "carol", "c" * 32)
    seqs = [r.envelope.seq for r in results]
    # All queued before the writer wakes: one commit, several chunks of the grouped UPDATE.
    acks = [store.ack("carol", seqs[:5]),  # not carol's: nothing
            store.ack("bob", seqs[:261]),  # 261 = 256 + 4 + 1 rows
            store.ack("bob", seqs[250:270]),  # 11 already acked just before
            store.ack("bob", [seqs[299], seqs[299]]),  # twice in one frame: once
            store.ack("bob", [carol.envelope.seq])]  # carol's envelope: bob cannot
    assert await asyncio.gather(*acks) == [0, 261, 9, 1, 0]
    assert await store.queue_depth("bob") == 300 - 261 - 9 - 1
    assert store.total_queue_depth() == 300 - 261 - 9 - 1 + 1
    left = [e.seq for e in await store.pending("bob", 100)]
    assert left == seqs[270:299]
    assert [e.msg for e in await store.pending("carol", 10)] == ["c" * 32]
    await store.close()
