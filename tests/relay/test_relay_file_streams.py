"""Durable file streams: the relay spools binary frames for an offline endpoint.

Real relay subprocesses on loopback. "Accepted" for a sender means: it sent the
frames, then a ``ping``, and got the ``pong`` — the relay answers a ping only after
every file frame read before it on that connection is committed to the store
(spooled) or handed to the peer's connection (live). There is no per-frame ack.
"""

from __future__ import annotations

import asyncio
import os
import re
import urllib.request
from pathlib import Path

import pytest

from relay import wire
from tests.relay.harness import Client, Identity, RelayProcess, start_relay
from tests.relay.stores import KINDS

RELAY_STORES = KINDS  # the `relay` fixture runs these tests on SQLite and on Redis

pytestmark = pytest.mark.slow

QUIET = 0.5  # seconds to watch for frames that must not come


# ---------------------------------------------------------------- helpers


def metric(relay: RelayProcess, name: str, labels: str = "") -> float:
    """One sample of the relay's /metrics (0 when absent)."""
    with urllib.request.urlopen(f"{relay.metrics_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def wait_metric(relay: RelayProcess, name: str, predicate, timeout: float = 10.0) -> float:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = metric(relay, name)
        if predicate(value):
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{name} stayed at {value}")
        await asyncio.sleep(0.05)


async def connect(relay: RelayProcess, identity: Identity) -> Client:
    return await Client(relay.url, identity, relay_id=relay.relay_id).connect()


async def register(relay: RelayProcess, *identities: Identity) -> None:
    """Log in once, so the relay knows the handle (a stream to it can then be opened)."""
    before = metric(relay, "qsecret_relay_authenticated_connections")
    for identity in identities:
        client = await connect(relay, identity)
        await client.close()
    await wait_metric(relay, "qsecret_relay_authenticated_connections", lambda v: v == before)


async def open_file(client: Client, stream: bytes, to: str, req_id: str) -> wire.Frame:
    """stream_open kind file; return the StreamOk or Error that answers it."""
    client.stream_open(stream, to, "file", req_id=req_id)
    await client.flush()

    def answer() -> wire.Frame | None:
        return next((e for e in client.events if isinstance(e, (wire.StreamOk, wire.Error))
                     and e.id == req_id), None)

    await client.wait(answer)
    found = answer()
    assert found is not None
    return found


async def ping(client: Client, req_id: str) -> None:
    """Round trip: everything this client sent before is now durable or forwarded."""
    client.conn.ping(req_id=req_id)
    await client.flush()
    await client.wait(lambda: any(isinstance(e, wire.Pong) and e.id == req_id
                                  for e in client.events), 15)


def frames(client: Client, stream: bytes) -> list[wire.BinaryFrame]:
    return [e for e in client.events if isinstance(e, wire.BinaryFrame) and e.stream == stream]


def chunks(count: int, size: int = 20_000, start: int = 0) -> dict[int, bytes]:
    return {seq: os.urandom(size - seq % 7) for seq in range(start, start + count)}


async def send_all(client: Client, stream: bytes, data: dict[int, bytes]) -> None:
    for seq, payload in data.items():
        client.send_chunk(stream, "file", seq, payload)
    await client.flush()


async def receive(relay: RelayProcess, identity: Identity, stream: bytes,
                  count: int) -> tuple[Client, list[wire.BinaryFrame]]:
    """Connect, wait for ``count`` frames of ``stream``, then make sure no more come."""
    client = await connect(relay, identity)
    await client.wait(lambda: len(frames(client, stream)) >= count, 20)
    await asyncio.sleep(QUIET)
    return client, frames(client, stream)


async def spooled_for_bob(relay: RelayProcess, alice: Identity, bob: Identity, count: int,
                          size: int = 20_000) -> tuple[Client, bytes, dict[int, bytes]]:
    """alice opens a file stream to an offline bob and sends ``count`` chunks, all durable
    (the pong says so): her connection, the stream and what was sent."""
    await register(relay, bob)
    sender = await connect(relay, alice)
    stream = os.urandom(16)
    assert isinstance(await open_file(sender, stream, "bob", "o1"), wire.StreamOk)
    sent = chunks(count, size=size)
    await send_all(sender, stream, sent)
    await ping(sender, "p1")
    return sender, stream, sent


@pytest.fixture
def relay(tmp_path: Path, relay_store: tuple[str, ...]):  # type: ignore[no-untyped-def]
    process = start_relay(tmp_path / "relay", *relay_store)
    yield process
    process.stop()


# ---------------------------------------------------------------- tests


async def test_offline_recipient_gets_spool_in_order_until_acked(relay: RelayProcess) -> None:
    alice, bob = Identity("alice"), Identity("bob")
    sender, stream, sent = await spooled_for_bob(relay, alice, bob, 24)
    assert metric(relay, "qsecret_relay_spool_bytes") == sum(len(p) + 32 for p in sent.values())

    # First connection: all of them, in order, the exact bytes, each once.
    first, got = await receive(relay, bob, stream, len(sent))
    assert [f.seq for f in got] == list(sent)
    assert [f.payload for f in got] == list(sent.values())
    first.stream_ack(stream, list(sent)[:12])  # the first half is durably handled
    await ping(first, "a1")
    await first.close()

    # Second connection: exactly the un-acked half again.
    second, got = await receive(relay, bob, stream, 12)
    assert [f.seq for f in got] == list(sent)[12:]
    assert [f.payload for f in got] == list(sent.values())[12:]
    second.stream_ack(stream, list(sent)[12:] + [999])  # 999 was never spooled: no-op
    await ping(second, "a2")
    await second.close()
    assert metric(relay, "qsecret_relay_spool_bytes") == 0

    # Third connection: nothing left.
    third = await connect(relay, bob)
    await asyncio.sleep(QUIET)
    assert frames(third, stream) == []
    assert not third.errors and not sender.errors
    await third.close()
    await sender.close()


async def test_a_pong_after_a_stream_ack_comes_once_the_frames_are_deleted(
        relay: RelayProcess) -> None:
    """A ping after a stream_ack is a barrier for the ack too: when the pong arrives the
    acked frames are gone (before, the pong could overtake the deletion: a flaky CI run)."""
    alice, bob = Identity("alice"), Identity("bob")
    sender, stream, sent = await spooled_for_bob(relay, alice, bob, 30, size=1000)
    receiver, got = await receive(relay, bob, stream, len(sent))
    left = metric(relay, "qsecret_relay_spool_bytes")
    for seq in sent:  # one ack, one ping, one look at the spool: 30 times
        receiver.stream_ack(stream, [seq])
        await ping(receiver, f"a{seq}")
        now = metric(relay, "qsecret_relay_spool_bytes")
        assert now == left - (len(sent[seq]) + 32), (seq, left, now)
        left = now
    assert left == 0
    await receiver.close()
    await sender.close()


async def test_reverse_direction_is_spooled_too(relay: RelayProcess) -> None:
    """The receiver's small control frames reach the sender after the sender reconnects."""
    alice, bob = Identity("alice"), Identity("bob")
    await register(relay, bob)
    sender = await connect(relay, alice)
    stream = os.urandom(16)
    await open_file(sender, stream, "bob", "o1")
    await sender.close()
    receiver = await connect(relay, bob)
    receiver.send_chunk(stream, "file", 7, b"resume from 42")
    await ping(receiver, "p1")
    await receiver.close()
    sender = await connect(relay, alice)
    assert isinstance(await open_file(sender, stream, "bob", "o2"), wire.StreamOk)  # idempotent
    await sender.wait(lambda: frames(sender, stream))
    assert [(f.seq, f.payload) for f in frames(sender, stream)] == [(7, b"resume from 42")]
    await sender.close()


async def test_spool_survives_kill_9_and_registration_survives_restart(
        tmp_path: Path, relay_store: tuple[str, ...]) -> None:
    relay = start_relay(tmp_path / "relay", *relay_store)
    alice, bob = Identity("alice"), Identity("bob")
    try:
        sender, stream, sent = await spooled_for_bob(relay, alice, bob, 16, size=100_000)
        relay.kill9()
        await sender.close()
        relay = start_relay(tmp_path / "relay", *relay_store, port=relay.port)

        # The registration is still there: the same opener re-opens idempotently...
        sender = await connect(relay, alice)
        assert isinstance(await open_file(sender, stream, "bob", "o2"), wire.StreamOk)
        # ... and the id cannot be taken for other endpoints, by anyone.
        await register(relay, Identity("carol"))
        taken = await open_file(sender, stream, "carol", "o3")
        assert isinstance(taken, wire.Error) and (taken.code, taken.message) == (
            "bad_field", "stream id taken")
        mallory = await connect(relay, Identity("mallory"))
        taken = await open_file(mallory, stream, "bob", "o4")
        assert isinstance(taken, wire.Error) and taken.code == "bad_field"

        receiver, got = await receive(relay, bob, stream, len(sent))
        assert [(f.seq, f.payload) for f in got] == list(sent.items())
        for client in (sender, mallory, receiver):
            await client.close()
    finally:
        relay.stop()


async def test_quota_refuses_with_stream_id_and_keeps_earlier_frames(tmp_path: Path) -> None:
    # One sender may fill all of bob's spool here (shares: tests/relay/test_fair_quotas.py).
    relay = start_relay(tmp_path / "relay", "--spool-quota", "200KiB", "--sender-share", "1")
    try:
        alice, bob = Identity("alice"), Identity("bob")
        await register(relay, bob)
        sender = await connect(relay, alice)
        assert sender.conn.limits["spool_quota"] == 200 * 1024
        stream = os.urandom(16)
        await open_file(sender, stream, "bob", "o1")
        sent = {seq: os.urandom(90 * 1024) for seq in range(4)}  # two fit in 200 KiB
        await send_all(sender, stream, sent)
        sender.send_chunk(stream, "file", 4, os.urandom(250 * 1024))  # over the quota
        await sender.flush()
        await ping(sender, "p1")
        refusals = [e for e in sender.errors if e.code == "quota_exceeded"]
        assert len(refusals) == 3, sender.errors
        assert all(e.stream == stream.hex() for e in refusals)
        messages = sorted(e.message for e in refusals)
        assert messages[0].startswith("bob's spool is full (200 KiB); try later (frame seq 2 ")
        assert messages[1].startswith("bob's spool is full (200 KiB); try later (frame seq 3 ")
        assert messages[2].startswith("frame seq 4 (256032 bytes) is larger than the whole "
                                      "spool quota of 200 KiB")
        assert metric(relay, "qsecret_relay_spool_refusals_total") == 3
        assert sender.closed is not None and not sender.closed.done()  # not a strike

        receiver, got = await receive(relay, bob, stream, 2)
        assert [(f.seq, f.payload) for f in got] == list(sent.items())[:2]
        # Acked frames free the quota; a refused frame sent again is then taken.
        receiver.stream_ack(stream, [0, 1])
        await ping(receiver, "a1")
        await receiver.close()
        await wait_metric(relay, "qsecret_relay_authenticated_connections", lambda v: v == 1)
        sender.send_chunk(stream, "file", 2, sent[2])
        await ping(sender, "p2")
        assert len(sender.errors) == 3
        receiver, got = await receive(relay, bob, stream, 1)
        assert [(f.seq, f.payload) for f in got] == [(2, sent[2])]
        await receiver.close()
        await sender.close()
    finally:
        relay.stop()


async def test_live_then_offline_then_back_counts_exactly(relay: RelayProcess) -> None:
    alice, bob = Identity("alice"), Identity("bob")
    sender = await connect(relay, alice)
    receiver = await connect(relay, bob)
    stream = os.urandom(16)
    await open_file(sender, stream, "bob", "o1")
    await receiver.wait(lambda: any(isinstance(e, wire.StreamIncoming) and
                                    e.stream == stream.hex() for e in receiver.events))
    # Both online: forwarded live, nothing spooled.
    live = chunks(10)
    await send_all(sender, stream, live)
    await receiver.wait(lambda: len(frames(receiver, stream)) == 10)
    assert metric(relay, 'qsecret_relay_file_frames_total{path="live"}') == 10
    assert metric(relay, "qsecret_relay_spool_bytes") == 0
    got = [(f.seq, f.payload) for f in frames(receiver, stream)]
    await receiver.close()
    await wait_metric(relay, "qsecret_relay_authenticated_connections", lambda v: v == 1)

    # Offline: spooled. Then back: the spool first, and frames sent meanwhile after it.
    offline = chunks(40, size=60_000, start=10)
    await send_all(sender, stream, offline)
    await ping(sender, "p1")
    assert metric(relay, 'qsecret_relay_file_frames_total{path="spooled"}') == 40
    receiver = await connect(relay, bob)
    meanwhile = chunks(20, start=50)
    await send_all(sender, stream, meanwhile)  # while the drain runs: appended behind it
    await receiver.wait(lambda: len(frames(receiver, stream)) == 60, 20)
    await ping(sender, "p2")
    # Once caught up the stream is live again.
    spooled_before = metric(relay, 'qsecret_relay_file_frames_total{path="spooled"}')
    live_before = metric(relay, 'qsecret_relay_file_frames_total{path="live"}')
    tail = chunks(5, start=70)
    await send_all(sender, stream, tail)
    await receiver.wait(lambda: len(frames(receiver, stream)) == 65)
    await asyncio.sleep(QUIET)
    assert metric(relay, 'qsecret_relay_file_frames_total{path="live"}') == live_before + 5
    assert metric(relay, 'qsecret_relay_file_frames_total{path="spooled"}') == spooled_before
    got += [(f.seq, f.payload) for f in frames(receiver, stream)]
    expected = {**live, **offline, **meanwhile, **tail}
    assert got == list(expected.items())  # all, in order, none twice
    # The other end is told when the stream closes.
    sender.stream_close(stream)
    await sender.flush()
    await receiver.wait(lambda: any(isinstance(e, wire.StreamClose) for e in receiver.events))
    await sender.close()
    await receiver.close()


async def test_strangers_cannot_ack_or_send_and_close_deletes_spool(relay: RelayProcess) -> None:
    alice, bob, carol = Identity("alice"), Identity("bob"), Identity("carol")
    await register(relay, bob)
    sender = await connect(relay, alice)
    stranger = await connect(relay, carol)
    stream = os.urandom(16)
    await open_file(sender, stream, "bob", "o1")
    await send_all(sender, stream, chunks(5))
    await ping(sender, "p1")
    spooled = metric(relay, "qsecret_relay_spool_bytes")
    assert spooled > 0

    stranger.stream_ack(stream, [0, 1, 2, 3, 4])
    await stranger.flush()
    error = await stranger.next_error()
    assert (error.code, error.stream) == ("unknown_stream", stream.hex())
    stranger.send_chunk(stream, "file", 9, b"not mine")
    await stranger.flush()
    assert (await stranger.next_error()).code == "unknown_stream"
    stranger.stream_close(stream)
    await stranger.flush()
    assert (await stranger.next_error()).code == "unknown_stream"
    await ping(stranger, "s1")
    assert metric(relay, "qsecret_relay_spool_bytes") == spooled  # nothing deleted

    sender.stream_close(stream)
    await ping(sender, "p2")
    assert metric(relay, "qsecret_relay_spool_bytes") == 0
    assert metric(relay, "qsecret_relay_file_streams") == 0
    sender.send_chunk(stream, "file", 5, b"late")
    await sender.flush()
    late = await sender.next_error()
    assert (late.code, late.stream) == ("unknown_stream", stream.hex())
    receiver = await connect(relay, bob)
    await asyncio.sleep(QUIET)
    assert frames(receiver, stream) == []
    for client in (sender, stranger, receiver):
        await client.close()


async def test_spooled_frames_expire_after_the_ttl(tmp_path: Path) -> None:
    relay = start_relay(tmp_path / "relay", "--spool-ttl", "1", "--expire-interval", "0.3")
    try:
        alice, bob = Identity("alice"), Identity("bob")
        await register(relay, bob)
        sender = await connect(relay, alice)
        stream = os.urandom(16)
        await open_file(sender, stream, "bob", "o1")
        await send_all(sender, stream, chunks(3))
        await ping(sender, "p1")
        assert metric(relay, "qsecret_relay_spool_bytes") > 0
        # (The counter is bumped after the sweep's commit, so wait for it, then the gauge.)
        await wait_metric(relay, "qsecret_relay_spool_expired_total", lambda v: v == 3)
        assert metric(relay, "qsecret_relay_spool_bytes") == 0
        # The idle stream's registration expired with them; its opener is told.
        await sender.wait(lambda: any(isinstance(e, wire.StreamClose) for e in sender.events))
        receiver = await connect(relay, bob)
        await asyncio.sleep(QUIET)
        assert frames(receiver, stream) == []
        sender.send_chunk(stream, "file", 3, b"late")
        await sender.flush()
        assert (await sender.next_error()).code == "unknown_stream"
        await receiver.close()
        await sender.close()
    finally:
        relay.stop()


async def test_file_stream_limits(tmp_path: Path) -> None:
    relay = start_relay(tmp_path / "relay", "--max-file-streams", "2")
    try:
        alice, bob = Identity("alice"), Identity("bob")
        await register(relay, bob)
        sender = await connect(relay, alice)
        ids = [os.urandom(16) for _ in range(3)]
        assert isinstance(await open_file(sender, ids[0], "bob", "o0"), wire.StreamOk)
        assert isinstance(await open_file(sender, ids[1], "bob", "o1"), wire.StreamOk)
        third = await open_file(sender, ids[2], "bob", "o2")
        assert isinstance(third, wire.Error) and third.code == "too_many_streams"
        assert isinstance(await open_file(sender, ids[0], "bob", "o3"), wire.StreamOk)
        nobody = await open_file(sender, ids[2], "nobody", "o4")
        assert isinstance(nobody, wire.Error) and nobody.code == "unknown_recipient"
        sender.stream_close(ids[0])
        await sender.flush()
        assert isinstance(await open_file(sender, ids[2], "bob", "o5"), wire.StreamOk)
        await sender.close()
    finally:
        relay.stop()


def test_spool_quota_sizes_parse() -> None:
    import argparse

    from relay.cli import parse_size

    assert parse_size("4GiB") == 4 * 1024**3
    assert parse_size("500MiB") == 500 * 1024**2
    assert parse_size("1.5GB") == 1_500_000_000
    assert parse_size("1000000") == 1_000_000
    for bad in ("", "GiB", "4 XB", "-1", "0"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_size(bad)


async def test_file_frames_have_their_own_rate_budget(tmp_path: Path) -> None:
    """Chunks do not spend the text-frame budget (in 256 KiB chunks it would cap a file at
    about 130 MB/s); their own budget throttles them, dropping nothing and keeping order."""
    relay = start_relay(tmp_path / "relay", "--rate", "20", "--burst", "20",
                        "--stream-rate", "40", "--stream-burst", "40")
    try:
        alice, bob = Identity("alice"), Identity("bob")
        await register(relay, bob)
        sender, receiver = await connect(relay, alice), await connect(relay, bob)
        stream = os.urandom(16)
        assert isinstance(await open_file(sender, stream, "bob", "open-1"), wire.StreamOk)
        await send_all(sender, stream, chunks(30, size=2_000))  # past the text burst only
        await receiver.wait(lambda: len(frames(receiver, stream)) >= 30, 20)
        assert metric(relay, "qsecret_relay_throttled_total") == 0
        await send_all(sender, stream, chunks(60, size=2_000, start=30))  # past its own burst
        await receiver.wait(lambda: len(frames(receiver, stream)) >= 90, 20)
        assert [f.seq for f in frames(receiver, stream)] == list(range(90))
        assert metric(relay, "qsecret_relay_throttled_total") > 0
        await sender.close()
        await receiver.close()
    finally:
        relay.stop()
