"""File streams and multi-session handles across two relays over one Redis (issue 19).

Two ``qsecret relay --store redis://…`` processes on one real redis-server (strict mode):
a file stream between a client on relay one and a client on relay two works live and from
the offline spool, under the same quotas as on one relay; a handle logged in on both relays
at once (two devices, or a client that failed over while its old connection lingers) gets
live deliveries on both, and what it acked on one is never sent again as new on the other.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay import wire
from tests.relay.harness import Client, Identity, RelayProcess, start_relay
from tests.relay.redis_server import RedisServer
from tests.relay.test_relay_file_streams import chunks, frames, open_file, ping, send_all

pytestmark = pytest.mark.slow


@pytest.fixture
def relays(tmp_path: Path, redis_server: RedisServer) -> Iterator[tuple[RelayProcess, ...]]:
    extra = ("--store", redis_server.url, "--redeliver-after", "3", "--sender-share", "1",
             "--spool-quota", "1MB")
    one = start_relay(tmp_path / "one", *extra)
    two = start_relay(tmp_path / "two", *extra)
    yield one, two
    one.stop()
    two.stop()


async def connect(relay: RelayProcess, identity: Identity, **options: object) -> Client:
    return await Client(relay.url, identity, relay_id=relay.relay_id,
                        **options).connect()  # type: ignore[arg-type]


async def spooled_bytes(server: RedisServer, handle: str | None = None) -> int:
    """Bytes the store spools, for everyone or for ``handle`` (read in Redis itself)."""
    import redis.asyncio as redis_asyncio

    peek = redis_asyncio.Redis.from_url(server.url)
    try:
        if handle is None:
            return int(await peek.hget("qsecret:total", "sp") or 0)
        return int(await peek.hget(f"qsecret:sq:{handle}", "b") or 0)
    finally:
        await peek.aclose()


async def queued(server: RedisServer, handle: str) -> int:
    import redis.asyncio as redis_asyncio

    peek = redis_asyncio.Redis.from_url(server.url)
    try:
        return int(await peek.hget(f"qsecret:qs:{handle}", "n") or 0)
    finally:
        await peek.aclose()


async def until(condition, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    """Poll an async condition with a deadline (the state is in another process)."""
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.02)


# ---------------------------------------------------------------- file streams


async def test_a_file_stream_between_two_relays_runs_live_both_ways(
        relays: tuple[RelayProcess, ...], redis_server: RedisServer) -> None:
    one, two = relays
    alice_id, bob_id = Identity("alice"), Identity("bob")
    bob = await connect(two, bob_id)
    alice = await connect(one, alice_id)
    stream = os.urandom(16)
    assert isinstance(await open_file(alice, stream, "bob", "o1"), wire.StreamOk)
    sent = chunks(40)
    await send_all(alice, stream, sent)
    # bob stays connected to relay two: only a wake-up between the relays brings these.
    await bob.wait(lambda: len(frames(bob, stream)) >= len(sent), 30)
    got = frames(bob, stream)
    assert [f.seq for f in got] == list(sent)
    assert [f.payload for f in got] == list(sent.values())
    # The receiver's control frame goes back the other way, from relay two to relay one.
    control = (1 << 51) + 1
    bob.send_chunk(stream, "file", control, b"resume from 17")
    await bob.flush()
    await alice.wait(lambda: frames(alice, stream), 30)
    assert [(f.seq, f.payload) for f in frames(alice, stream)] == [(control, b"resume from 17")]
    # Acks on relay two delete the frames relay one spooled (a pong follows the deletion).
    bob.stream_ack(stream, list(sent))
    await ping(bob, "acked")
    assert await spooled_bytes(redis_server, "bob") == 0
    alice.stream_ack(stream, [control])
    await ping(alice, "acked")
    assert await spooled_bytes(redis_server) == 0
    assert not alice.errors and not bob.errors
    # Either end closes it on either relay.
    bob.stream_close(stream)
    await ping(bob, "closed")
    alice.send_chunk(stream, "file", 99, b"late")
    await alice.flush()
    error = await alice.next_error(10)
    assert error.code == "unknown_stream"
    await alice.close()
    await bob.close()


async def test_the_offline_spool_is_drained_on_the_other_relay_and_after_failover(
        relays: tuple[RelayProcess, ...], redis_server: RedisServer) -> None:
    one, two = relays
    alice_id, bob_id = Identity("alice"), Identity("bob")
    await (await connect(two, bob_id)).close()  # bob exists, and is offline
    alice = await connect(one, alice_id)
    stream = os.urandom(16)
    assert isinstance(await open_file(alice, stream, "bob", "o1"), wire.StreamOk)
    sent = chunks(24)
    await send_all(alice, stream, sent)
    await ping(alice, "durable")  # the pong: every frame is in Redis
    assert await spooled_bytes(redis_server, "bob") == sum(len(p) + 32 for p in sent.values())
    # bob logs in on relay two, which never saw this stream nor these frames.
    bob = await connect(two, bob_id)
    await bob.wait(lambda: len(frames(bob, stream)) >= len(sent), 30)
    got = frames(bob, stream)
    assert [(f.seq, f.payload) for f in got] == list(sent.items())
    bob.stream_ack(stream, list(sent)[:12])
    await ping(bob, "half")
    await bob.close()
    # Relay two dies; bob moves to relay one and gets exactly the half he did not ack.
    two.kill9()
    bob = await connect(one, bob_id)
    await bob.wait(lambda: len(frames(bob, stream)) >= 12, 30)
    got = frames(bob, stream)
    assert [(f.seq, f.payload) for f in got] == list(sent.items())[12:]
    bob.stream_ack(stream, list(sent)[12:])
    await ping(bob, "rest")
    assert await spooled_bytes(redis_server) == 0
    assert not alice.errors and not bob.errors
    await alice.close()
    await bob.close()


async def test_the_spool_quota_holds_across_relays(
        relays: tuple[RelayProcess, ...], redis_server: RedisServer) -> None:
    """bob's 1 MB spool quota is one quota, whichever relay the frames come through."""
    one, two = relays
    alice_id, bob_id = Identity("alice"), Identity("bob")
    await (await connect(two, bob_id)).close()
    alice = await connect(one, alice_id)
    stream = os.urandom(16)
    assert isinstance(await open_file(alice, stream, "bob", "o1"), wire.StreamOk)
    await send_all(alice, stream, {seq: os.urandom(200_000) for seq in range(4)})
    await ping(alice, "p1")
    assert not alice.errors
    # The same sender, now also on relay two: 250 kB more would pass 1 MB.
    again = await connect(two, alice_id)
    again.send_chunk(stream, "file", 4, os.urandom(250_000))
    await again.flush()
    error = await again.next_error(10)
    assert error.code == "quota_exceeded" and error.stream == stream.hex()
    assert await spooled_bytes(redis_server, "bob") == 4 * (200_000 + 32)
    await again.close()
    await alice.close()


# ---------------------------------------------------------------- one handle on two relays


async def test_a_handle_on_both_relays_gets_live_deliveries_on_both_and_acks_once(
        relays: tuple[RelayProcess, ...], redis_server: RedisServer) -> None:
    one, two = relays
    bob_id = Identity("bob")
    alice = await connect(one, Identity("alice"))
    carol = await connect(two, Identity("carol"))
    # bob reads and acks "first" on relay one...
    bob_old = await connect(one, bob_id, auto_ack=False)
    first = await alice.send("bob", b"first")
    await bob_old.wait(lambda: [d.msg for d in bob_old.delivered] == [first], 20)
    bob_old.conn.ack([bob_old.delivered[0].seq])
    await bob_old.flush()
    await until(lambda: _is(queued(redis_server, "bob"), 0))
    # ... then fails over to relay two while the old connection lingers (or: a second
    # device). The new connection's login finds nothing queued: "first" is not new.
    bob_new = await connect(two, bob_id, auto_ack=False)
    # Live on both: the sender's relay pushes to its own session, the other relay is
    # woken through Redis (the handle has sessions on both).
    second = await carol.send("bob", b"second")
    await bob_old.wait(lambda: second in [d.msg for d in bob_old.delivered], 20)
    await bob_new.wait(lambda: second in [d.msg for d in bob_new.delivered], 20)
    bob_old.conn.ack([d.seq for d in bob_old.delivered if d.msg == second])
    await bob_old.flush()
    await until(lambda: _is(queued(redis_server, "bob"), 0))
    # "third" is acked by nobody: both connections get it live, then again when their
    # relays redeliver what is unacked (3 s). "second", acked on relay one before relay
    # two's timer came due, is not sent to bob_new again.
    third = await alice.send("bob", b"third")
    await bob_new.wait(lambda: [d.msg for d in bob_new.delivered].count(third) == 2, 30)
    await bob_old.wait(lambda: [d.msg for d in bob_old.delivered].count(third) == 2, 30)
    assert [d.msg for d in bob_new.delivered] == [second, third, third]
    assert [d.msg for d in bob_old.delivered] == [first, second, third, third]
    for client in (alice, carol, bob_old, bob_new):
        assert not client.errors
        await client.close()


async def _is(value, expected: int) -> bool:  # type: ignore[no-untyped-def]
    return await value == expected
