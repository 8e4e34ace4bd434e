"""Relays on Redis as processes (``qsecret relay --store redis://…``): what they print and
answer on /healthz, and live delivery between two relays sharing one Redis (issue 19)."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from relay import wire
from tests.relay.harness import Client, Identity, start_relay
from tests.relay.redis_server import RedisServer


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_the_relay_names_its_store_and_healthz_pings_redis(tmp_path: Path,
                                                           redis_server: RedisServer) -> None:
    relay = start_relay(tmp_path / "relay", "--store", redis_server.url)
    try:
        assert f"relay store: redis {redis_server.url} (durability strict)\n" in relay.output
        assert _get(relay.http_url + "/healthz") == (200, "ok\n")  # the public port: no more
        assert relay.metrics_url is not None
        status, text = _get(relay.metrics_url + "/healthz")
        assert status == 200 and text.startswith("ok\nredis ok (")
        redis_server.kill9()
        status, text = _get(relay.metrics_url + "/healthz")
        assert status == 503 and text.startswith("store unreachable: ")
        assert _get(relay.http_url + "/healthz") == (503, "store unreachable\n")
    finally:
        relay.stop()
    sqlite = start_relay(tmp_path / "sqlite")
    try:
        assert any(line.startswith("relay store: sqlite ") for line in sqlite.output)
        assert _get(sqlite.metrics_url + "/healthz") == (200, "ok\n")  # type: ignore[operator]
    finally:
        sqlite.stop()


def test_a_relay_refuses_a_redis_without_fsync_always(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", fsync="everysec").start()
    try:
        with pytest.raises(RuntimeError, match="appendfsync always"):
            start_relay(tmp_path / "relay", "--store", server.url)
        relay = start_relay(tmp_path / "relay", "--store", server.url,
                            "--redis-durability", "everysec")
        relay.stop()
    finally:
        server.stop()


async def test_clients_on_two_relays_over_one_redis_exchange_10000_live(
        tmp_path: Path, redis_server: RedisServer) -> None:
    # The test sends as fast as it can, 5000 from one sender to one recipient.
    fast = ("--rate", "100000", "--burst", "100000", "--sender-share", "1")
    one = start_relay(tmp_path / "one", "--store", redis_server.url, *fast)
    two = start_relay(tmp_path / "two", "--store", redis_server.url, *fast)
    try:
        alice_id, bob_id = Identity("alice"), Identity("bob")
        bob = await Client(two.url, bob_id).connect()
        alice = await Client(one.url, alice_id).connect()
        # Live both ways: nobody reconnects, so only a wake-up between the relays (pub/sub,
        # published once the envelope is in Redis) makes these arrive.
        count = 5000
        to_bob = [alice.conn.send("bob", b"to bob %d" % i) for i in range(count)]
        to_alice = [bob.conn.send("alice", b"to alice %d" % i) for i in range(count)]
        await alice.flush()
        await bob.flush()
        await bob.wait(lambda: len(bob.delivered) >= count, timeout=120)
        await alice.wait(lambda: len(alice.delivered) >= count, timeout=120)
        await alice.wait(lambda: set(to_bob) <= set(alice.stored), timeout=120)
        await bob.wait(lambda: set(to_alice) <= set(bob.stored), timeout=120)
        await _pong(alice, "settled")
        await _pong(bob, "settled")
        # Exactly once, every byte as sent.
        assert sorted(d.msg for d in bob.delivered) == sorted(to_bob)
        assert sorted(d.body for d in bob.delivered) == sorted(b"to bob %d" % i
                                                             for i in range(count))
        assert sorted(d.msg for d in alice.delivered) == sorted(to_alice)
        await alice.close()
        await bob.close()
    finally:
        one.stop()
        two.stop()


async def _pong(client: Client, req_id: str) -> None:
    """A ping answered: every frame the client sent before it has been handled."""
    client.conn.ping(req_id=req_id)
    await client.flush()
    await client.wait(lambda: any(isinstance(e, wire.Pong) and e.id == req_id
                                  for e in client.events))


async def _queued_in_redis(server: RedisServer, handle: str, count: int) -> None:
    """Wait until ``handle``'s queue in Redis holds ``count`` envelopes (polling a condition
    with a deadline, as Client.wait does)."""
    import redis.asyncio as redis_asyncio

    peek = redis_asyncio.Redis.from_url(server.url)
    try:
        async with asyncio.timeout(30):
            while int(await peek.hget(f"qsecret:qs:{handle}", "n") or 0) != count:
                await asyncio.sleep(0.01)
    finally:
        await peek.aclose()


async def test_a_relay_killed_mid_way_loses_nothing_and_repeats_nothing_acked(
        tmp_path: Path, redis_server: RedisServer) -> None:
    one = start_relay(tmp_path / "one", "--store", redis_server.url)
    two = start_relay(tmp_path / "two", "--store", redis_server.url)
    try:
        alice_id, bob_id = Identity("alice"), Identity("bob")
        bob = await Client(one.url, bob_id, auto_ack=False).connect()
        alice = await Client(two.url, alice_id).connect()
        to_bob = [await alice.send("bob", b"%d" % i) for i in range(300)]
        await alice.wait(lambda: set(to_bob) <= set(alice.stored), timeout=30)
        await bob.wait(lambda: len(bob.delivered) >= 300, timeout=30)
        acked = {d.msg for d in bob.delivered[:100]}
        bob.conn.ack([d.seq for d in bob.delivered[:100]])
        await bob.flush()
        # A pong does not wait for acks (they are not confirmed to clients: an ack lost
        # with its relay only means a redelivery). Wait until Redis has applied these.
        await _queued_in_redis(redis_server, "bob", 200)
        one.kill9()  # 200 deliveries are pending on relay one's consumer, never acked
        await bob.close()
        bob = await Client(two.url, bob_id).connect()  # bob moves to relay two
        await bob.wait(lambda: len(bob.delivered) >= 200, timeout=30)
        await _pong(bob, "settled")
        assert sorted(d.msg for d in bob.delivered) == sorted(set(to_bob) - acked)
        await alice.close()
        await bob.close()
    finally:
        one.stop()
        two.stop()


async def test_redis_restarted_under_a_running_relay_loses_nothing_stored(
        tmp_path: Path, redis_server: RedisServer) -> None:
    relay = start_relay(tmp_path / "relay", "--store", redis_server.url)
    try:
        alice_id, bob_id = Identity("alice"), Identity("bob")
        bob = await Client(relay.url, bob_id).connect()
        await bob.close()
        alice = await Client(relay.url, alice_id).connect()
        before = [await alice.send("bob", b"before %d" % i) for i in range(200)]
        await alice.wait(lambda: set(before) <= set(alice.stored), timeout=30)
        redis_server.kill9()
        lost = await alice.send("bob", b"while Redis is down")
        await alice.wait(lambda: any(e.msg == lost for e in alice.errors), timeout=30)
        assert lost not in alice.stored  # refused, never "stored": the client sends it again
        redis_server.restart()
        again = await alice.send("bob", b"while Redis is down", msg_id=lost)
        after = await alice.send("bob", b"after")
        await alice.wait(lambda: {again, after} <= set(alice.stored), timeout=30)
        bob = await Client(relay.url, bob_id).connect()
        await bob.wait(lambda: len(bob.delivered) >= 202, timeout=30)
        await _pong(bob, "settled")
        assert sorted(d.msg for d in bob.delivered) == sorted([*before, lost, after])
        await alice.close()
        await bob.close()
    finally:
        relay.stop()


async def test_live_delivery_between_relays_resumes_after_a_redis_restart(
        tmp_path: Path, redis_server: RedisServer) -> None:
    one = start_relay(tmp_path / "one", "--store", redis_server.url)
    two = start_relay(tmp_path / "two", "--store", redis_server.url)
    try:
        bob = await Client(two.url, Identity("bob")).connect()
        alice = await Client(one.url, Identity("alice")).connect()
        first = await alice.send("bob", b"before")
        await bob.wait(lambda: [d.msg for d in bob.delivered] == [first], timeout=30)
        redis_server.kill9()
        redis_server.restart()
        # Relay two's subscriber reconnects and subscribes again; relay one's next send
        # (retried by the client until stored) wakes bob's session on relay two live.
        second = await alice.send("bob", b"after")
        while second not in alice.stored:
            await alice.wait(lambda: second in alice.stored or any(
                e.msg == second for e in alice.errors), timeout=30)
            if second not in alice.stored:
                alice.errors.clear()
                await alice.send("bob", b"after", msg_id=second)
        await bob.wait(lambda: second in [d.msg for d in bob.delivered], timeout=30)
        await alice.close()
        await bob.close()
    finally:
        one.stop()
        two.stop()
