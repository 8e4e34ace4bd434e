"""Prekey directory: signed upload, fetch consuming one one-time prekey atomically."""

from __future__ import annotations

import asyncio

from relay import wire
from tests.relay.harness import HYBRID, Client, Identity, RelayProcess

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
    # Bob heard that he is running low, down to zero.
    await bob.wait(lambda: any(isinstance(e, wire.PrekeysLow) and e.remaining == 0
                               for e in bob.events))

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


async def test_prekeys_survive_restart_and_count_at_login(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.relay.harness import start_relay

    relay = start_relay(tmp_path / "r")
    carol_id = Identity("carol")
    carol = await Client(relay.url, carol_id).connect()
    carol.conn.upload_prekeys(wire.sign_bundle("carol", carol_id.keypair.public_key, b"s",
                                               [(1, b"a"), (2, b"b")], carol_id.sign))
    await carol.flush()
    await carol.wait(lambda: any(isinstance(e, wire.PrekeysOk) for e in carol.events))
    await carol.close()
    relay.stop()
    relay = start_relay(tmp_path / "r")
    try:
        carol = await Client(relay.url, carol_id).connect()
        assert carol.auth_ok is not None and carol.auth_ok.prekeys == 2
        await carol.close()
    finally:
        relay.stop()
