"""The Redis store's bookkeeping stays exact when many operations share one call.

The Lua functions write the per-recipient counters back with one HSET/HDEL, the totals
once per call and the expiry index with one ZADD/ZREM per call (relay/store/redis_lua.py).
These tests mix sends, resends, acks (repeated, unknown, of envelopes queued in the same
call) from two stores on one real redis-server, then recount everything from the raw keys.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as redis_asyncio

from relay.store import EnqueueStatus, StoreLimits
from relay.store.redis import RedisStore
from tests.relay.redis_server import RedisServer

PREFIX = "qsecret:"
SENDERS = ("alice", "carol", "dave")
RECIPIENTS = ("bob", "erin")


async def _open(url: str, limits: StoreLimits) -> RedisStore:
    store = RedisStore(url, limits)
    await store.open()
    for handle in SENDERS + RECIPIENTS:
        await store.bind_identity(handle, handle.encode())
    return store


async def _recount(url: str) -> dict[str, Any]:
    """Counters and index as stored, and as they should be from the queued envelopes."""
    client = redis_asyncio.Redis.from_url(url)
    try:
        stored: dict[str, Any] = {"total": await client.hgetall(PREFIX + "total"),
                                  "exp": set(await client.zrange(PREFIX + "exp", 0, -1))}
        expected: dict[str, Any] = {"n": 0, "b": 0, "exp": set()}
        for rcpt in RECIPIENTS:
            counts: dict[bytes, int] = {}
            ix = await client.hgetall(f"{PREFIX}ix:{rcpt}")
            for seq, meta in ix.items():
                _, size, sender = meta.split(b" ", 2)
                for field, by in ((b"n", 1), (b"b", int(size)),
                                  (b"n:" + sender, 1), (b"b:" + sender, int(size))):
                    counts[field] = counts.get(field, 0) + by
                expected["exp"].add(rcpt.encode() + b"\0" + seq)
            expected["n"] += len(ix)
            expected["b"] += counts.get(b"b", 0)
            held = {k: int(v) for k, v in (await client.hgetall(f"{PREFIX}qs:{rcpt}")).items()}
            assert held == counts, rcpt
            assert await client.xlen(f"{PREFIX}q:{rcpt}") == len(ix)
            assert (await client.xpending(f"{PREFIX}q:{rcpt}", "relay"))["pending"] <= len(ix)
        return {"stored": stored, "expected": expected}
    finally:
        await client.aclose()


async def test_counts_stay_exact_when_sends_and_acks_share_calls(
        redis_server: RedisServer) -> None:
    limits = StoreLimits(quota_messages=1000, sender_share=1.0)
    one, two = await _open(redis_server.url, limits), await _open(redis_server.url, limits)
    try:
        queued: list[Any] = []  # envelopes stored and not acked yet
        for round_ in range(6):
            futures, fresh = [], []
            for i in range(60):
                store = one if i % 2 else two
                sender, rcpt = SENDERS[i % 3], RECIPIENTS[(i + round_) % 2]
                msg = f"{round_ * 1000 + i:032x}"
                body = bytes(i % 7 + round_)  # some empty bodies too
                envelope = store.new_envelope(sender, rcpt, msg, body)
                fresh.append(envelope)
                futures.append(asyncio.ensure_future(store.enqueue(envelope)))
                if i % 10 == 0:  # a resend of a stored one: refused as a duplicate
                    again = store.new_envelope(sender, rcpt, msg, body)
                    futures.append(asyncio.ensure_future(store.enqueue(again)))
            await asyncio.sleep(0)  # the sends are queued; the acks below go behind them
            acked: set[int] = set()
            for rcpt in RECIPIENTS:
                older = [e.seq for e in queued if e.recipient == rcpt][: 25 + round_]
                # and some sent through `one` just now: their enqueue may share the call
                now = [e.seq for e in fresh[1::2] if e.recipient == rcpt][:4]
                one.ack_nowait(rcpt, older + now + older[:3] + now[:1] + [10**12 + round_])
                acked.update(older + now)
            results = await asyncio.gather(*futures)
            statuses = [r.status for r in results]
            assert statuses.count(EnqueueStatus.DUPLICATE) == 6
            assert statuses.count(EnqueueStatus.STORED) == 60
            queued = [e for e in queued + fresh if e.seq not in acked]
            await one.barrier()
            await two.barrier()
            counts = await _recount(redis_server.url)
            total = {k: int(v) for k, v in counts["stored"]["total"].items()}
            assert total.get(b"n", 0) == counts["expected"]["n"] == len(queued)
            assert total.get(b"b", 0) == counts["expected"]["b"]
            assert counts["stored"]["exp"] == counts["expected"]["exp"]
            assert one.total_queue_depth() == len(queued)
        # Everything expires: counters, totals and index all go back to nothing.
        one.limits = StoreLimits(quota_messages=1000, sender_share=1.0, ttl_seconds=-60)
        assert await one.expire() == len(queued)
        counts = await _recount(redis_server.url)
        assert {k: int(v) for k, v in counts["stored"]["total"].items()}.get(b"n", 0) == 0
        assert counts["stored"]["exp"] == set() == counts["expected"]["exp"]
        assert one.total_queue_depth() == 0
    finally:
        await one.close()
        await two.close()
