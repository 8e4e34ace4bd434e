"""Prekey directory: signed upload, fetch consuming one one-time prekey atomically."""

from __future__ import annotations

import asyncio

from relay import wire
from relay.prekeys import PREKEYS_LOW
from tests.relay.harness import HYBRID, Client, Identity, RelayProcess, start_relay
from tests.relay.stores import KINDS

RELAY_STORES = KINDS  # the `relay` fixture runs these tests on SQLite and on Redis

ONE_TIME = 30
FETCHERS = 8
FETCHES_EACH = 5  # 40 fetches for 30 keys: 10 must come back empty


async def test_concurrent_fetches_never_share_a_prekey(relay: RelayProcess) -> None:
    bob_id = Identity("bob")
    bob = await Client(relay.url, bob_id).connect()
    keys = [(key_id, f"kem-public-key-{key_id}".encode()) for key_id in range(100, 100 + ONE_TIME)]
    bundle = wire.sign_bundle("bob", bob_id.keypair.public_key, b"signed part v1", keys,
                              bob_id.sign)
    bob.conn.upload_prekeys(bundle, req_id="up1")
    await bob.flush()
    await bob.wait(lambda: any(isinstance(e, wire.PrekeysOk) for e in bob.events))
    ok = next(e for e in bob.events if isinstance(e, wire.PrekeysOk))
    assert (ok.stored, ok.id) == (ONE_TIME, "up1")

    fetchers = [await Client(relay.url, Identity(f"f{i}")).connect() for i in range(FETCHERS)]
    for client in fetchers:
        for n in range(FETCHES_EACH):
            client.conn.fetch_prekeys("bob", req_id=f"q{n}")
    # All fetch requests go out at once, from 8 connections.
    await asyncio.gather(*(client.flush() for client in fetchers))

    def bundles(client: Client) -> list[wire.Bundle]:
        return [e for e in client.events if isinstance(e, wire.Bundle)]

    for client in fetchers:
        await client.wait(lambda c=client: len(bundles(c)) == FETCHES_EACH)
    got = [b for client in fetchers for b in bundles(client)]
    handed = [b.bundle.one_time[0].key_id for b in got if b.bundle.one_time]
    assert sorted(handed) == [key_id for key_id, _ in keys]  # each exactly once
    empty = [b for b in got if not b.bundle.one_time]
    assert len(empty) == FETCHERS * FETCHES_EACH - ONE_TIME
    assert all(b.remaining == 0 for b in empty)
    assert sorted(b.remaining for b in got if b.bundle.one_time) == list(range(ONE_TIME))
    for b in got:  # what the relay hands out still verifies against bob's identity
        wire.verify_bundle("bob", b.bundle, HYBRID.verify)
        assert b.bundle.signed == b"signed part v1"
    # Bob heard once that he is running low: from the fetch that crossed the threshold.
    await bob.wait(lambda: any(isinstance(e, wire.PrekeysLow) for e in bob.events))
    assert await lows(bob) == [PREKEYS_LOW - 1]

    # A new upload replaces the signed part and refills.
    bundle2 = wire.sign_bundle("bob", bob_id.keypair.public_key, b"signed part v2", [(7, b"k7")],
                               bob_id.sign)
    bob.conn.upload_prekeys(bundle2)
    await bob.flush()
    await bob.wait(lambda: sum(isinstance(e, wire.PrekeysOk) for e in bob.events) == 2)
    fetchers[0].conn.fetch_prekeys("bob")
    await fetchers[0].flush()
    await fetchers[0].wait(lambda: len(bundles(fetchers[0])) == FETCHES_EACH + 1)
    last = bundles(fetchers[0])[-1]
    assert last.bundle.signed == b"signed part v2"
    assert [k.key_id for k in last.bundle.one_time] == [7] and last.remaining == 0
    for client in [bob, *fetchers]:
        await client.close()


async def test_prekeys_survive_restart_and_count_at_login(  # type: ignore[no-untyped-def]
        tmp_path, relay_store: tuple[str, ...]) -> None:
    relay = start_relay(tmp_path / "r", *relay_store)
    carol_id = Identity("carol")
    carol = await Client(relay.url, carol_id).connect()
    carol.conn.upload_prekeys(wire.sign_bundle("carol", carol_id.keypair.public_key, b"s",
                                               [(1, b"a"), (2, b"b")], carol_id.sign))
    await carol.flush()
    await carol.wait(lambda: any(isinstance(e, wire.PrekeysOk) for e in carol.events))
    await carol.close()
    relay.stop()
    relay = start_relay(tmp_path / "r", *relay_store)
    try:
        carol = await Client(relay.url, carol_id).connect()
        assert carol.auth_ok is not None and carol.auth_ok.prekeys == 2
        await carol.close()
    finally:
        relay.stop()


def _keys(first: int, count: int) -> list[tuple[int, bytes]]:
    return [(key_id, f"kem-public-key-{key_id}".encode()) for key_id in range(first, first + count)]


async def upload(client: Client, keys: list[tuple[int, bytes]], req_id: str) -> wire.PrekeysOk:
    me = client.identity
    client.conn.upload_prekeys(
        wire.sign_bundle(me.handle, me.keypair.public_key, b"signed", keys, me.sign),
        req_id=req_id)
    await client.flush()
    await client.wait(lambda: any(isinstance(e, wire.PrekeysOk) and e.id == req_id
                                  for e in client.events))
    return next(e for e in client.events if isinstance(e, wire.PrekeysOk) and e.id == req_id)


async def fetch(client: Client, handle: str, count: int, tag: str) -> list[wire.Event]:
    """``count`` fetches sent at once; their answers (bundle or error), in request order."""
    ids = [f"{tag}{n}" for n in range(count)]
    for req_id in ids:
        client.conn.fetch_prekeys(handle, req_id=req_id)
    await client.flush()

    def answers() -> dict[str, wire.Event]:
        return {e.id: e for e in client.events
                if isinstance(e, wire.Bundle | wire.Error) and e.id in ids}

    await client.wait(lambda: len(answers()) == count)
    found = answers()
    return [found[req_id] for req_id in ids]


async def lows(client: Client) -> list[int]:
    """Every prekeys_low the client got so far. A ping's pong comes after any frame the
    relay queued for this connection before it, so none is still on its way."""
    tag = f"ping{len(client.events)}"
    client.conn.ping(req_id=tag)
    await client.flush()
    await client.wait(lambda: any(isinstance(e, wire.Pong) and e.id == tag
                                  for e in client.events))
    return [e.remaining for e in client.events if isinstance(e, wire.PrekeysLow)]


async def test_prekeys_low_is_sent_once_per_threshold_crossing(relay: RelayProcess) -> None:
    dana = await Client(relay.url, Identity("dana")).connect()
    eve = await Client(relay.url, Identity("eve")).connect()
    assert (await upload(dana, _keys(1, 12), "u1")).stored == 12
    answers = await fetch(eve, "dana", 20, "a")  # 12 keys, then 8 bundles without one
    assert [a.remaining for a in answers] == [*range(11, -1, -1), *[0] * 8]  # type: ignore[union-attr]
    assert await lows(dana) == [PREKEYS_LOW - 1]  # not one per fetch below the threshold

    # An upload that stays below the threshold does not re-arm it ...
    assert (await upload(dana, _keys(100, 5), "u2")).stored == 5
    await fetch(eve, "dana", 5, "b")
    assert await lows(dana) == [PREKEYS_LOW - 1]
    # ... one that lifts the count to it or above does: the next crossing is told again.
    assert (await upload(dana, _keys(200, 11), "u3")).stored == 11
    await fetch(eve, "dana", 11, "c")
    assert await lows(dana) == [PREKEYS_LOW - 1, PREKEYS_LOW - 1]
    for client in (dana, eve):
        await client.close()


async def test_an_upload_replaces_the_one_time_prekeys_held(relay: RelayProcess) -> None:
    """The client prunes private keys once an upload without them is acknowledged: the
    relay must then no longer hand out their public halves."""
    fay = await Client(relay.url, Identity("fay")).connect()
    gus = await Client(relay.url, Identity("gus")).connect()
    assert (await upload(fay, _keys(1, 20), "u1")).stored == 20
    assert (await upload(fay, _keys(50, 3), "u2")).stored == 3
    answers = await fetch(gus, "fay", 4, "q")
    handed = [k.key_id for a in answers for k in a.bundle.one_time]  # type: ignore[union-attr]
    assert handed == [50, 51, 52]
    for client in (fay, gus):
        await client.close()


async def test_bundle_fetches_are_rate_limited_per_requester(tmp_path) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(tmp_path / "r", "--prekey-fetch-rate", "0.5", "--prekey-fetch-burst", "3")
    try:
        hal = await Client(relay.url, Identity("hal")).connect()
        ivy = await Client(relay.url, Identity("ivy")).connect()
        jon = await Client(relay.url, Identity("jon")).connect()
        assert (await upload(hal, _keys(1, 20), "u1")).stored == 20
        answers = await fetch(ivy, "hal", 5, "i")
        assert [type(a).__name__ for a in answers] == ["Bundle"] * 3 + ["Error"] * 2
        for refusal in answers[3:]:
            assert isinstance(refusal, wire.Error) and refusal.code == "rate_limited"
            assert "0.5 per second" in refusal.message and "bursts of 3" in refusal.message
        # A refused fetch took no key, and another requester has a bucket of its own.
        other = await fetch(jon, "hal", 1, "j")
        assert isinstance(other[0], wire.Bundle) and other[0].remaining == 16
        assert ivy.conn is not None and ivy.closed is not None and not ivy.closed.done()
        for client in (hal, ivy, jon):
            await client.close()
    finally:
        relay.stop()
