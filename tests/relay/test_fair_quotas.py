"""Fair quotas (issue 14 item 3): a sender's share of a recipient's queue and spool, the
store's global cap, and the limit on new handles per address; every refusal names whose
limit it is.

The policy and the limiter are pure (tested here on their own); the store's accounting is
tested on each store directly (shares survive acks, expiry and a reopen); the behaviour
users see is tested against a real relay process with small limits.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from relay import wire
from relay.limits import RegistrationLimit, quota_refusal
from relay.store import (
    EnqueueStatus,
    QuotaVerdict,
    SpoolStatus,
    SqliteStore,
    Store,
    StoreLimits,
    StreamStatus,
    quota_verdict,
)
from tests.relay.harness import Client, Identity, RelayProcess, start_relay
from tests.relay.stores import StoreFactory
from tests.relay.test_relay_file_streams import wait_metric

KiB = 1024


# ---------------------------------------------------------------- the policy, pure


def _verdict(size: int = 10, *, held: int = 0, held_bytes: int = 0, share_held: int = 0,
             share_held_bytes: int = 0, store_used: int = 0, store_cap: int = 0) -> QuotaVerdict:
    return quota_verdict(size, held=held, held_bytes=held_bytes, quota=8, quota_bytes=800,
                         share_held=share_held, share_held_bytes=share_held_bytes, share=2,
                         share_bytes=200, store_used=store_used, store_cap=store_cap)


def test_quota_verdict_names_whose_limit() -> None:
    assert _verdict() is QuotaVerdict.OK
    assert _verdict(share_held=1, held=7) is QuotaVerdict.OK  # the last place is anyone's
    assert _verdict(share_held=2, held=2) is QuotaVerdict.SHARE
    assert _verdict(share_held_bytes=195, held_bytes=195) is QuotaVerdict.SHARE
    # The recipient's queue full: said so, even when this sender's share is full too.
    assert _verdict(held=8, share_held=2) is QuotaVerdict.RECIPIENT
    assert _verdict(held_bytes=795) is QuotaVerdict.RECIPIENT
    assert _verdict(store_used=995, store_cap=1000) is QuotaVerdict.STORE
    assert _verdict(store_used=10**12, store_cap=0) is QuotaVerdict.OK  # no cap


def test_store_limits_share_and_validation() -> None:
    limits = StoreLimits(quota_messages=10, quota_bytes=1000, sender_share=0.25)
    assert (limits.share_messages, limits.share_bytes) == (2, 250)
    assert StoreLimits(quota_messages=2, sender_share=0.1).share_messages == 1  # never 0
    assert StoreLimits(sender_share=1.0).share_messages == StoreLimits().quota_messages
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="sender_share"):
            StoreLimits(sender_share=bad)
    with pytest.raises(ValueError, match="max_store_bytes"):
        StoreLimits(max_store_bytes=-1)


def test_refusal_texts_say_whose_quota() -> None:
    assert quota_refusal("share_exceeded", "bob", place="queue", messages=2,
                         size=512 * KiB).startswith(
        "your share of bob's queue is full (2 messages / 512 KiB from one sender)")
    assert quota_refusal("quota_exceeded", "bob", place="queue", messages=1,
                         size=100).startswith("bob's queue is full (1 message / 100 bytes)")
    assert quota_refusal("store_full", "bob", place="spool", messages=None,
                         size=1024**3).startswith("the relay's store is full (1 GiB on disk)")


def test_registration_limit_window_networks_and_memory() -> None:
    limit = RegistrationLimit(2, 60.0, exempt=("127.0.0.0/8", "::1/128"))
    assert limit.take("192.0.2.1", now=0.0) and limit.take("192.0.2.1", now=1.0)
    assert not limit.take("192.0.2.1", now=2.0)  # third within the window
    assert limit.retry_after("192.0.2.1", now=2.0) == pytest.approx(58.0)
    assert limit.take("192.0.2.2", now=2.0)  # another address has its own count
    assert limit.take("::ffff:192.0.2.1", now=60.5)  # same address (mapped), first has aged out
    assert not limit.take("192.0.2.1", now=60.6)
    # IPv6 counts per /64: a host cannot step around the limit inside its own prefix.
    assert limit.take("2001:db8:1:2::1", now=0.0) and limit.take("2001:db8:1:2::ffff", now=0.0)
    assert not limit.take("2001:db8:1:2:aaaa::5", now=0.0)
    assert limit.take("2001:db8:1:3::1", now=0.0)
    assert all(limit.take("127.0.0.1", now=0.0) for _ in range(10))  # exempt
    assert all(limit.take("::1", now=0.0) for _ in range(10))
    # Addresses quiet for a whole window are forgotten: memory follows recent registrations.
    assert limit.take("198.51.100.9", now=1000.0)
    assert set(limit._times) == {"198.51.100.9"}
    assert RegistrationLimit(0, 60.0).take("192.0.2.1")  # 0: no limit


def test_flags_are_checked() -> None:
    import argparse

    from relay.cli import parse_networks, parse_share

    assert parse_share("1/4") == 0.25 and parse_share("0.5") == 0.5 and parse_share("1") == 1.0
    for bad in ("0", "1.5", "1/0", "a quarter", "-1/4"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_share(bad)
    assert parse_networks("10.0.0.1/8, ::1") == ("10.0.0.0/8", "::1/128")
    assert parse_networks("") == ()
    with pytest.raises(ValueError, match="'nope' is not a network"):
        parse_networks("127.0.0.0/8,nope")
    with pytest.raises(ValueError, match="registration"):
        RegistrationLimit(-1, 60.0)


# ---------------------------------------------------------------- the store's accounting


async def _store(where: Path | StoreFactory, **limits: float) -> Store:
    """A store with four users: SQLite in a directory, or either store (tests/relay/stores)."""
    if isinstance(where, StoreFactory):
        store = await where.open(StoreLimits(**limits))  # type: ignore[arg-type]
    else:
        store = SqliteStore(where / "s.db", StoreLimits(**limits), synchronous="NORMAL")  # type: ignore[arg-type]
        await store.open()
    for handle in ("alice", "bob", "carol", "mallory"):
        await store.bind_identity(handle, handle.encode())
    return store


async def _send(store: Store, sender: str, to: str, body: bytes = b"x") -> EnqueueStatus:
    envelope = store.new_envelope(sender, to, os.urandom(16).hex(), body)
    return (await store.enqueue(envelope)).status


async def test_a_stranger_fills_only_his_share_of_the_queue(stores: StoreFactory) -> None:
    store = await _store(stores, quota_messages=8, quota_bytes=8000, sender_share=0.25)
    # Grouped in one commit as a flood would be: the share holds within a batch too.
    flood = await asyncio.gather(*(store.enqueue(store.new_envelope(
        "mallory", "bob", f"{i:032x}", b"m")) for i in range(20)))
    assert [r.status for r in flood].count(EnqueueStatus.STORED) == 2
    assert {r.status for r in flood} == {EnqueueStatus.STORED, EnqueueStatus.SHARE_EXCEEDED}
    assert await _send(store, "alice", "bob") is EnqueueStatus.STORED  # a friend still gets in
    assert await _send(store, "mallory", "carol") is EnqueueStatus.STORED  # shares are per pair
    # Bytes count too: 3000 bytes is over a quarter of 8000.
    assert await _send(store, "carol", "bob", b"c" * 3000) is EnqueueStatus.SHARE_EXCEEDED
    # Acks free the share: mallory may send again once bob took his.
    mine = [e.seq for e in await store.pending("bob", 10) if e.sender == "mallory"]
    assert await store.ack("bob", mine[:1]) == 1
    assert await _send(store, "mallory", "bob") is EnqueueStatus.STORED
    assert await _send(store, "mallory", "bob") is EnqueueStatus.SHARE_EXCEEDED
    await store.close()
    # The shares are re-read from the disk after a restart.
    store = await stores.open(StoreLimits(quota_messages=8, quota_bytes=8000))
    assert await _send(store, "mallory", "bob") is EnqueueStatus.SHARE_EXCEEDED
    assert await _send(store, "alice", "bob") is EnqueueStatus.STORED
    # Many senders together still fill the recipient's queue: then it is bob's quota.
    statuses = [await _send(store, sender, "bob") for sender in ("carol", "carol", "dave",
                                                                 "dave")]
    assert statuses == [EnqueueStatus.STORED] * 4
    assert await store.queue_depth("bob") == 8
    assert await _send(store, "erin", "bob") is EnqueueStatus.QUOTA_EXCEEDED
    await store.close()


async def test_expiry_frees_shares(stores: StoreFactory) -> None:
    store = await _store(stores, quota_messages=4, sender_share=0.5, ttl_seconds=0.2)
    assert await store.queue_depth("bob") == 0  # bob's depth (and shares) now cached
    assert [await _send(store, "mallory", "bob") for _ in range(3)] == [
        EnqueueStatus.STORED, EnqueueStatus.STORED, EnqueueStatus.SHARE_EXCEEDED]
    deadline = time.time() + 0.25
    while time.time() < deadline:  # the TTL is wall-clock time: let it pass
        await asyncio.sleep(0.05)
    assert await store.expire() == 2
    assert await _send(store, "mallory", "bob") is EnqueueStatus.STORED
    await store.close()


async def test_spool_shares_follow_the_streams_sender(stores: StoreFactory) -> None:
    store = await _store(stores, sender_share=0.25)
    now = int(time.time() * 1000)
    later = now + 60_000
    from_mallory, from_alice, to_mallory = b"\x01" * 16, b"\x02" * 16, b"\x03" * 16
    for stream, a, b in ((from_mallory, "mallory", "bob"), (from_alice, "alice", "bob"),
                         (to_mallory, "bob", "mallory")):
        assert await store.register_stream(stream, a, b, now, later, 8) is StreamStatus.NEW
    quota = 4000  # share 1000 bytes

    async def spool(stream: bytes, recipient: str, seq: int, size: int = 400) -> SpoolStatus:
        return (await store.spool(recipient, stream, seq, b"s" * size, now, later,
                                  quota)).status

    assert [await spool(from_mallory, "bob", seq) for seq in range(3)] == [
        SpoolStatus.STORED, SpoolStatus.STORED, SpoolStatus.SHARE_EXCEEDED]
    assert await spool(from_mallory, "bob", 1) is SpoolStatus.DUPLICATE  # a resend is no refusal
    assert await spool(from_alice, "bob", 0) is SpoolStatus.STORED  # a friend still gets in
    # bob's own stream to mallory: frames spooled for mallory are bob's share of his spool.
    assert await spool(to_mallory, "mallory", 0, 900) is SpoolStatus.STORED
    # Acks free the share.
    assert await store.spool_ack("bob", from_mallory, [0]) == 1
    assert await spool(from_mallory, "bob", 2) is SpoolStatus.STORED
    await store.close()
    store = await stores.open(StoreLimits(sender_share=0.25))  # re-read from the disk
    assert await spool(from_mallory, "bob", 3) is SpoolStatus.SHARE_EXCEEDED
    assert await store.close_stream(from_mallory) == 2  # closing frees it all
    assert await store.register_stream(from_mallory, "mallory", "bob", now, later,
                                       8) is StreamStatus.NEW
    assert await spool(from_mallory, "bob", 0) is SpoolStatus.STORED
    await store.close()


async def test_global_cap_refuses_then_makes_room_at_once(tmp_path: Path) -> None:
    probe = await _store(tmp_path / "probe")
    await probe.close()
    empty = (tmp_path / "probe" / "s.db").stat().st_size  # an empty store's database
    store = await _store(tmp_path, sender_share=1.0, max_store_bytes=empty + 300 * KiB)
    body = os.urandom(60 * KiB)
    statuses = [await _send(store, "alice", "bob", body) for _ in range(8)]
    stored = statuses.count(EnqueueStatus.STORED)
    assert 2 <= stored <= 5 and statuses[stored:] == [EnqueueStatus.STORE_FULL] * (8 - stored)
    now = int(time.time() * 1000)
    await store.register_stream(b"\x07" * 16, "carol", "alice", now, now + 60_000, 8)
    assert (await store.spool("alice", b"\x07" * 16, 0, body, now, now + 60_000,
                              10**9)).status is SpoolStatus.STORE_FULL
    # bob reads his queue: the pages are free again, and the very next send is measured.
    await store.ack("bob", [e.seq for e in await store.pending("bob", 10)])
    assert await _send(store, "alice", "bob", body) is EnqueueStatus.STORED
    await store.close()


# ---------------------------------------------------------------- a real relay


async def _connect(relay: RelayProcess, identity: Identity) -> Client:
    return await Client(relay.url, identity, relay_id=relay.relay_id).connect()


async def _answer(client: Client, msg: str) -> wire.Error | None:
    """Wait for the relay's word on ``msg``: None when stored, else its refusal."""
    await client.wait(lambda: msg in client.stored or any(e.msg == msg for e in client.errors))
    return next((e for e in client.errors if e.msg == msg), None)


async def test_a_strangers_flood_does_not_stop_a_friends_message(tmp_path: Path) -> None:
    relay = start_relay(tmp_path / "relay", "--quota", "8", "--quota-bytes", "64KiB",
                        "--sender-share", "1/4")
    try:
        bob_id = Identity("bob")
        bob = await _connect(relay, bob_id)
        await bob.close()  # bob is registered and offline: his queue fills
        stranger = await _connect(relay, Identity("mallory"))
        assert stranger.conn.limits["queue_share"] == 2  # announced in hello.limits
        msgs = [await stranger.send("bob", os.urandom(100)) for _ in range(10)]  # > the queue
        answers = [await _answer(stranger, msg) for msg in msgs]
        assert answers[:2] == [None, None]
        refusals = answers[2:]
        assert all(e is not None and e.code == "share_exceeded" for e in refusals), answers
        assert refusals[0] is not None and refusals[0].message.startswith(
            "your share of bob's queue is full (2 messages / 16 KiB from one sender)")
        friend = await _connect(relay, Identity("alice"))
        hello = await friend.send("bob", b"hello bob")
        assert await _answer(friend, hello) is None
        bob = await _connect(relay, bob_id)
        await bob.wait(lambda: len(bob.delivered) == 3)
        assert sorted(d.sender for d in bob.delivered) == ["alice", "mallory", "mallory"]
        # bob read (acked) them: mallory's share is free again once the store has the acks
        # (sends and acks grouped in one commit count the sends first).
        await wait_metric(relay, "qsecret_relay_queue_depth", lambda depth: depth == 0)
        await bob.close()
        again = await stranger.send("bob", os.urandom(100))
        assert await _answer(stranger, again) is None
        for client in (stranger, friend):
            await client.close()
    finally:
        relay.stop()


async def test_recipients_own_quota_is_named_as_his(tmp_path: Path) -> None:
    relay = start_relay(tmp_path / "relay", "--quota", "4", "--sender-share", "0.5")
    try:
        bob = await _connect(relay, Identity("bob"))
        await bob.close()
        senders = [await _connect(relay, Identity(name)) for name in ("alice", "carol", "dave")]
        for sender in senders[:2]:
            for _ in range(2):
                assert await _answer(sender, await sender.send("bob", b"x")) is None
        refusal = await _answer(senders[2], await senders[2].send("bob", b"x"))
        assert refusal is not None and refusal.code == "quota_exceeded"
        assert refusal.message.startswith("bob's queue is full (4 messages / 64 MiB)")
        for sender in senders:
            await sender.close()
    finally:
        relay.stop()


async def test_a_strangers_file_frames_fill_only_his_share_of_the_spool(tmp_path: Path) -> None:
    relay = start_relay(tmp_path / "relay", "--spool-quota", "400KiB", "--sender-share", "1/4")
    try:
        await (await _connect(relay, Identity("bob"))).close()
        stranger = await _connect(relay, Identity("mallory"))
        friend = await _connect(relay, Identity("alice"))
        streams = {}
        for client in (stranger, friend):
            stream = client.open_stream("bob", "file", req_id="o1")
            await client.flush()
            await client.wait(lambda c=client: any(isinstance(e, wire.StreamOk)
                                                   for e in c.events))
            streams[client.identity.handle] = stream
        for seq in range(4):  # 4 x 40 KiB: the share is 100 KiB
            stranger.send_chunk(streams["mallory"], "file", seq, os.urandom(40 * KiB))
        await stranger.flush()
        refusal = await stranger.next_error()
        assert refusal.code == "share_exceeded" and refusal.stream == streams["mallory"].hex()
        assert refusal.message.startswith(
            "your share of bob's spool is full (100 KiB from one sender)")
        friend.send_chunk(streams["alice"], "file", 0, os.urandom(40 * KiB))
        friend.conn.ping(req_id="p1")
        await friend.flush()
        await friend.wait(lambda: any(isinstance(e, wire.Pong) for e in friend.events))
        assert friend.errors == []  # the friend's frame was spooled
        for client in (stranger, friend):
            await client.close()
    finally:
        relay.stop()


async def test_global_store_cap_refuses_with_store_full(tmp_path: Path) -> None:
    relay = start_relay(tmp_path / "relay", "--max-store-size", "600KiB", "--sender-share", "1")
    try:
        await (await _connect(relay, Identity("bob"))).close()
        alice = await _connect(relay, Identity("alice"))
        answers = []
        for _ in range(16):  # 16 x 60 KiB: more than the cap
            answers.append(await _answer(alice, await alice.send("bob", os.urandom(60 * KiB))))
        refusals = [e for e in answers if e is not None]
        assert refusals and answers.index(refusals[0]) >= 2, answers
        assert {e.code for e in refusals} == {"store_full"}
        assert refusals[0].message.startswith("the relay's store is full (600 KiB on disk)")
        await alice.close()
    finally:
        relay.stop()


async def test_new_handles_per_address_are_limited(tmp_path: Path) -> None:
    relay = start_relay(tmp_path / "relay", "--registrations", "2",
                        "--registration-window", "3600", "--registration-exempt", "")
    try:
        first = Identity("alice")
        for identity in (first, Identity("bob")):
            await (await _connect(relay, identity)).close()
        late = Client(relay.url, Identity("carol"), relay_id=relay.relay_id)
        await late.connect(wait_auth=False)
        error = await late.next_error()
        assert error.code == "too_many_registrations"
        assert "'carol' is not registered" in error.message and "try again in" in error.message
        assert late.auth_ok is None
        await late.close()
        # A handle registered before logs in as always: only new handles count.
        again = await _connect(relay, first)
        assert again.auth_ok is not None and not again.auth_ok.new
        await again.close()
    finally:
        relay.stop()


async def test_loopback_is_exempt_by_default(tmp_path: Path) -> None:
    relay = start_relay(tmp_path / "relay", "--registrations", "1")
    try:
        for name in ("alice", "bob", "carol"):
            await (await _connect(relay, Identity(name))).close()
    finally:
        relay.stop()
