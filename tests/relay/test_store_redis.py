"""What only the Redis store has: durability checked at open, a Redis crash in strict mode,
several relays (stores) on one Redis, and delivery takeover through the consumer group.

Every test runs a real redis-server (tests/relay/redis_server.py), never a mock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from relay.store import EnqueueStatus, Envelope, SpoolStatus, StoreLimits
from relay.store.redis import RedisStore, RedisUnavailable, check_durability
from tests.relay.redis_server import RedisServer


async def _open(url: str, limits: StoreLimits | None = None, **options: object) -> RedisStore:
    store = RedisStore(url, limits, **options)  # type: ignore[arg-type]
    await store.open()
    for handle in ("alice", "bob", "carol"):
        await store.bind_identity(handle, handle.encode())
    return store


def test_durability_rules() -> None:
    strict_ok = {"appendonly": "yes", "appendfsync": "always"}
    assert check_durability(strict_ok, "strict") is None
    assert check_durability(strict_ok, "everysec") is None
    loose = {"appendonly": "yes", "appendfsync": "everysec"}
    assert check_durability(loose, "everysec") is None
    problem = check_durability(loose, "strict")
    assert problem is not None and "redis-server --appendonly yes --appendfsync always" in problem
    assert check_durability({"appendonly": "no", "appendfsync": "everysec"}, "everysec")


async def test_strict_refuses_a_server_without_fsync_always(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", fsync="everysec").start()
    try:
        with pytest.raises(RedisUnavailable, match="--appendfsync always"):
            await RedisStore(server.url).open()
        store = await _open(server.url, durability="everysec")  # documented: may lose 1 s
        await store.close()
    finally:
        server.stop()
    with pytest.raises(RedisUnavailable, match="cannot reach Redis"):
        await RedisStore(server.url).open()


async def test_a_redis_crash_in_strict_mode_loses_nothing_acked_as_stored(
        redis_server: RedisServer) -> None:
    store = await _open(redis_server.url)
    stored: list[Envelope] = []
    refused = 0

    async def sender(first: int) -> None:
        """Send one after another until a send fails; kill Redis once 1000 are stored."""
        nonlocal refused
        for i in range(first, 100_000, 100):
            envelope = store.new_envelope("alice", "bob", f"{i:032x}", b"%d" % i)
            try:
                result = await store.enqueue(envelope)
            except Exception:  # Redis is gone: not stored, and the relay says so
                refused += 1
                return
            assert result.status is EnqueueStatus.STORED
            stored.append(envelope)
            if len(stored) == 1000:
                redis_server.kill9()  # the 99 other senders have their next send queued

    await asyncio.gather(*(sender(n) for n in range(100)))
    assert len(stored) >= 1000 and refused == 100
    redis_server.restart()
    # The same store carries on once Redis is back (it reconnects), and a fresh one
    # (a restarted relay) sees every envelope it was told was stored, exactly once.
    after = store.new_envelope("alice", "bob", "e" * 32, b"after")
    assert (await store.enqueue(after)).status is EnqueueStatus.STORED
    store2 = await _open(redis_server.url)
    queued = await store2.pending("bob", 10_000)
    by_seq = {e.seq: e for e in queued}
    assert len(by_seq) == len(queued)
    for envelope in [*stored, after]:
        assert by_seq.get(envelope.seq) == envelope
    assert await store2.queue_depth("bob") == len(queued) == store2.total_queue_depth()
    fresh = store2.new_envelope("alice", "bob", "f" * 32, b"f")
    assert fresh.seq > max(by_seq)  # numbers never reused after a Redis crash
    await store.close()
    await store2.close()


async def test_two_relays_share_quotas_dedup_and_numbers_atomically(
        redis_server: RedisServer) -> None:
    limits = StoreLimits(quota_messages=50, sender_share=1.0)
    one, two = await _open(redis_server.url, limits), await _open(redis_server.url, limits)
    envelopes = [store.new_envelope("alice", "bob", f"{i:032x}", b"x")
                 for i in range(80) for store in (one, two)]
    assert len({e.seq for e in envelopes}) == len(envelopes)  # unique across relays
    # Each msg goes through both relays at once: stored once, the other is a duplicate;
    # and the two relays together never store more than the recipient's quota.
    results = await asyncio.gather(*((one if n % 2 == 0 else two).enqueue(e)
                                     for n, e in enumerate(envelopes)))
    statuses = [r.status for r in results]
    assert statuses.count(EnqueueStatus.STORED) == 50
    assert statuses.count(EnqueueStatus.QUOTA_EXCEEDED) + statuses.count(
        EnqueueStatus.DUPLICATE) == len(envelopes) - 50
    msgs = [e.msg for e in await one.pending("bob", 100)]
    assert len(msgs) == len(set(msgs)) == 50
    assert await two.queue_depth("bob") == 50
    await one.close()
    await two.close()


async def test_a_live_relay_takes_over_a_dead_relays_pending_deliveries(
        redis_server: RedisServer) -> None:
    import redis.asyncio as redis_asyncio

    dead = await _open(redis_server.url, consumer="relay-a")
    sent = [dead.new_envelope("alice", "bob", f"{i:032x}", b"m") for i in range(5)]
    for envelope in sent:
        await dead.enqueue(envelope)
    assert await dead.pending("bob", 3) == sent[:3]  # handed out by relay A, never acked
    await dead.close()
    peek = redis_asyncio.Redis.from_url(redis_server.url)
    owners = await peek.xpending_range("qsecret:q:bob", "relay", "-", "+", 10)
    assert {o["consumer"] for o in owners} == {b"relay-a"} and len(owners) == 3

    live = await _open(redis_server.url, consumer="relay-b")
    assert await live.pending("bob", 10) == sent  # A's three first, then the new two
    owners = await peek.xpending_range("qsecret:q:bob", "relay", "-", "+", 10)
    assert {o["consumer"] for o in owners} == {b"relay-b"} and len(owners) == 5
    assert await live.ack("bob", [e.seq for e in sent]) == 5
    assert await peek.xpending_range("qsecret:q:bob", "relay", "-", "+", 10) == []
    assert await peek.xlen("qsecret:q:bob") == 0  # acked entries leave the stream
    await live.close()
    await peek.aclose()


async def test_the_global_cap_counts_the_bytes_redis_holds(redis_server: RedisServer) -> None:
    kib = 1024
    store = await _open(redis_server.url, StoreLimits(sender_share=1.0,
                                                      max_store_bytes=300 * kib))
    body = b"b" * (60 * kib)
    results = [await store.enqueue(store.new_envelope("alice", "bob", f"{i:032x}", body))
               for i in range(7)]
    assert [r.status for r in results] == [EnqueueStatus.STORED] * 5 + [
        EnqueueStatus.STORE_FULL] * 2
    now = int(time.time() * 1000)
    stream = b"\x07" * 16
    await store.register_stream(stream, "carol", "alice", now, now + 60_000, 8)
    assert (await store.spool("alice", stream, 0, body, now, now + 60_000,
                              10**9)).status is SpoolStatus.STORE_FULL
    # bob reads one envelope: its bytes are free again at once, for a frame as for a send.
    assert await store.ack("bob", [results[0].envelope.seq]) == 1  # type: ignore[union-attr]
    assert (await store.spool("alice", stream, 0, body, now, now + 60_000,
                              10**9)).status is SpoolStatus.STORED
    assert (await store.enqueue(store.new_envelope("alice", "bob", "z" * 32, body))).status \
        is EnqueueStatus.STORE_FULL
    await store.close()


async def test_a_burst_in_one_loop_pass_never_runs_out_of_numbers(
        redis_server: RedisServer) -> None:
    # The relay numbers envelopes without I/O (new_envelope) as it reads frames; a block is
    # refilled only once the loop turns, so a burst handled in one pass must fit in one.
    store = await _open(redis_server.url, StoreLimits(quota_messages=20_000, sender_share=1.0))
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    results: list[object] = []

    def settled(ok: bool, value: object) -> None:
        results.append(value if ok else repr(value))
        if len(results) == 10_000:
            done.set_result(None)

    for i in range(10_000):  # no await in between: one loop pass
        store.enqueue_then(store.new_envelope("alice", "bob", f"{i:032x}", b"x"), settled)
    await done
    assert {r.status for r in results} == {EnqueueStatus.STORED}  # type: ignore[attr-defined]
    assert await store.queue_depth("bob") == 10_000
    await store.close()


async def test_a_server_weakened_after_open_is_refused_until_it_is_fixed(
        redis_server: RedisServer) -> None:
    import redis.asyncio as redis_asyncio

    store = await _open(redis_server.url)
    admin = redis_asyncio.Redis.from_url(redis_server.url)
    await admin.config_set("appendfsync", "everysec")
    await store.expire()  # each expiry round re-reads the server's durability
    with pytest.raises(RedisUnavailable, match="appendfsync always"):
        await store.enqueue(store.new_envelope("alice", "bob", "a" * 32, b"a"))
    with pytest.raises(RedisUnavailable):
        await store.health()
    await admin.config_set("appendfsync", "always")
    await store.expire()
    result = await store.enqueue(store.new_envelope("alice", "bob", "a" * 32, b"a"))
    assert result.status is EnqueueStatus.STORED
    await admin.aclose()
    await store.close()


def test_without_redis_py_the_relay_says_how_to_get_it() -> None:
    import subprocess
    import sys

    # A fresh interpreter where `import redis` fails, as on a machine without the extra.
    code = ("import sys, asyncio; sys.modules['redis'] = None\n"
            "from relay.store.redis import RedisStore\n"
            "asyncio.run(RedisStore('redis://127.0.0.1:1/0').open())\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode != 0
    assert "pip install 'qsecret[redis]'" in result.stderr


async def test_operations_queued_together_run_as_one_call_in_order_and_fail_alone(
        redis_server: RedisServer) -> None:
    """The writer sends a run of operations as one qs_batch call (one fsync, one reply):
    they run in the order queued, and one that fails fails alone."""
    store = await _open(redis_server.url)
    try:
        before = store.round_trips
        loop = asyncio.get_running_loop()
        stored, broken, stored_too = (loop.create_future() for _ in range(3))

        def settle(future: asyncio.Future[object]) -> Callable[[bool, object], None]:
            def done(ok: bool, value: object) -> None:
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)  # type: ignore[arg-type]
            return done

        # Queued in one go (no await in between): one pipeline; the four function calls
        # are one qs_batch call, the plain HGET after them its own command.
        store.enqueue_then(store.new_envelope("alice", "bob", "m1", b"one"), settle(stored))
        store._queue("qs_no_such_operation", (store.prefix,), lambda reply: reply, broken)
        read = store._call("qs_pending", "bob", store.consumer, 10, convert=len)
        store.enqueue_then(store.new_envelope("alice", "bob", "m2", b"two"), settle(stored_too))
        depth = store._read("HGET", store.prefix + "qs:bob", "n", convert=int)
        assert (await stored).status is EnqueueStatus.STORED
        with pytest.raises(Exception, match="unknown relay operation qs_no_such_operation"):
            await broken
        assert await read == 1  # after the first enqueue, before the second
        assert (await stored_too).status is EnqueueStatus.STORED
        assert await depth == 2  # the command after the run sees all of it
        assert store.round_trips - before == 1
    finally:
        await store.close()
