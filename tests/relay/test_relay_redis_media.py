"""Live media streams (calls) across two relays over one Redis (issue 19, "Done when": a client
connected to either relay reaches any other).

Two ``qsecret relay --store redis://…`` processes on one real redis-server: a media stream
opened on relay one to a client on relay two carries frames both ways, in order and live
(published, never stored); an open to a handle with no session anywhere is answered
``recipient_offline``; a close, or the connection ending, on one side reaches the other; a
frame for a stream the sender does not own is refused.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay import wire
from tests.relay.harness import Client, Identity, RelayProcess, start_relay
from tests.relay.redis_server import RedisServer
from tests.relay.test_relay_file_streams import frames, metric, ping

pytestmark = pytest.mark.slow


@pytest.fixture
def relays(tmp_path: Path, redis_server: RedisServer) -> Iterator[tuple[RelayProcess, ...]]:
    extra = ("--store", redis_server.url)
    one = start_relay(tmp_path / "one", *extra)
    two = start_relay(tmp_path / "two", *extra)
    yield one, two
    one.stop()
    two.stop()


IDENTITIES: dict[str, Identity] = {}


async def connect(relay: RelayProcess, name: str) -> Client:
    """``name``'s client (one identity per handle, kept across reconnections)."""
    identity = IDENTITIES.setdefault(name, Identity(name))
    return await Client(relay.url, identity, relay_id=relay.relay_id).connect()


async def answer(client: Client, req_id: str) -> wire.Frame:
    """The StreamOk or Error answering the stream_open ``req_id``."""
    def found() -> wire.Frame | None:
        return next((e for e in client.events if isinstance(e, (wire.StreamOk, wire.Error))
                     and getattr(e, "id", None) == req_id), None)
    await client.wait(found, 15)
    result = found()
    assert result is not None
    return result


async def call(caller: Client, callee: Client, callee_name: str) -> bytes:
    """Open a media stream from ``caller`` to ``callee``; both ends see it."""
    stream = caller.open_stream(callee_name, "media", req_id="call")
    await caller.flush()
    assert isinstance(await answer(caller, "call"), wire.StreamOk)
    await callee.wait(lambda: any(isinstance(e, wire.StreamIncoming) and e.stream == stream.hex()
                                  for e in callee.events), 15)
    incoming = next(e for e in callee.events if isinstance(e, wire.StreamIncoming))
    assert (incoming.kind, incoming.sender) == ("media", caller.identity.handle)
    return stream


def closes(client: Client, stream: bytes) -> list[wire.StreamClose]:
    return [e for e in client.events
            if isinstance(e, wire.StreamClose) and e.stream == stream.hex()]


async def test_media_frames_cross_relays_both_ways_in_order(
        relays: tuple[RelayProcess, ...]) -> None:
    one, two = relays
    alice = await connect(one, "alice")
    bob = await connect(two, "bob")
    stream = await call(alice, bob, "bob")
    sent = [os.urandom(160 + seq % 40) for seq in range(100)]  # 2 s of a call's frames
    for seq, payload in enumerate(sent):
        alice.send_chunk(stream, "media", seq, payload)
        bob.send_chunk(stream, "media", seq, payload[::-1])
    await alice.flush()
    await bob.flush()
    await bob.wait(lambda: len(frames(bob, stream)) >= len(sent), 20)
    await alice.wait(lambda: len(frames(alice, stream)) >= len(sent), 20)
    assert [(f.seq, f.payload) for f in frames(bob, stream)] == list(enumerate(sent))
    assert [(f.seq, f.payload) for f in frames(alice, stream)] == \
        [(seq, p[::-1]) for seq, p in enumerate(sent)]
    # The caller hangs up on relay one: bob's relay two tells bob.
    alice.stream_close(stream)
    await alice.flush()
    await bob.wait(lambda: closes(bob, stream), 15)
    # A frame of bob's crossing the close is no abuse, and goes nowhere.
    bob.send_chunk(stream, "media", 999, b"late")
    await bob.flush()
    error = await bob.next_error(10)
    assert (error.code, error.stream) == ("unknown_stream", stream.hex())
    assert not alice.errors
    assert not [f for f in frames(alice, stream) if f.seq == 999]
    await alice.close()
    await bob.close()


async def test_an_open_to_a_handle_connected_nowhere_is_recipient_offline(
        relays: tuple[RelayProcess, ...]) -> None:
    one, two = relays
    await (await connect(two, "bob")).close()  # bob exists, and is offline everywhere
    alice = await connect(one, "alice")
    alice.open_stream("bob", "media", req_id="m1")
    await alice.flush()
    refusal = await answer(alice, "m1")
    assert isinstance(refusal, wire.Error) and refusal.code == "recipient_offline"
    # bob comes back on relay two: the same call goes through.
    bob = await connect(two, "bob")
    await call(alice, bob, "bob")
    await alice.close()
    await bob.close()


async def test_the_connection_ending_closes_the_stream_on_the_other_relay(
        relays: tuple[RelayProcess, ...]) -> None:
    one, two = relays
    alice = await connect(one, "alice")
    bob = await connect(two, "bob")
    stream = await call(bob, alice, "alice")  # opened from relay two this time
    alice.send_chunk(stream, "media", 0, b"hello")
    await alice.flush()
    await bob.wait(lambda: frames(bob, stream), 15)
    await bob.close()  # bob's connection ends without a stream_close
    await alice.wait(lambda: closes(alice, stream), 15)
    assert not alice.errors
    await alice.close()


async def test_a_frame_for_a_stream_the_sender_does_not_own_is_refused(
        relays: tuple[RelayProcess, ...]) -> None:
    one, two = relays
    alice = await connect(one, "alice")
    bob = await connect(two, "bob")
    mallory = await connect(one, "mallory")  # on alice's relay, not in the call
    stream = await call(alice, bob, "bob")
    mallory.send_chunk(stream, "media", 0, b"injected")
    await mallory.flush()
    error = await mallory.next_error(10)
    assert error.code == "unknown_stream"
    eve = await connect(two, "eve")  # on bob's relay, not in the call either
    eve.send_chunk(stream, "media", 0, b"injected")
    await eve.flush()
    assert (await eve.next_error(10)).code == "unknown_stream"
    # A second open of the same stream id, from elsewhere, is refused too.
    eve.stream_open(stream, "alice", "media", req_id="dup")
    await eve.flush()
    refusal = await answer(eve, "dup")
    assert isinstance(refusal, wire.Error)
    # The call itself goes on, untouched.
    alice.send_chunk(stream, "media", 1, b"real")
    await alice.flush()
    await bob.wait(lambda: frames(bob, stream), 15)
    assert [f.payload for f in frames(bob, stream)] == [b"real"]
    for client in (alice, bob, mallory, eve):
        await client.close()


async def test_a_relay_dying_mid_call_ends_the_stream_on_the_other(
        relays: tuple[RelayProcess, ...]) -> None:
    """Relay two is killed: relay one's next publish for it reaches no subscriber, so
    alice's stream is closed (the call's "connection lost" path), not left hanging."""
    one, two = relays
    alice = await connect(one, "alice")
    bob = await connect(two, "bob")
    stream = await call(alice, bob, "bob")
    two.kill9()
    alice.send_chunk(stream, "media", 0, b"anyone there?")
    await alice.flush()
    await alice.wait(lambda: closes(alice, stream), 15)
    assert not alice.errors
    await alice.close()


async def test_frames_redis_cannot_take_are_dropped_counted_and_bounded(
        relays: tuple[RelayProcess, ...], redis_server: RedisServer) -> None:
    """Redis stalls mid-call: relay one keeps at most MEDIA_QUEUE frames (plus the batch in
    flight) for it and drops the rest, counted; what arrives after is in order."""
    from relay.routing_redis import MEDIA_QUEUE

    one, two = relays
    alice = await connect(one, "alice")
    bob = await connect(two, "bob")
    stream = await call(alice, bob, "bob")
    sent = 2 * MEDIA_QUEUE + 100
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        for seq in range(sent):
            alice.send_chunk(stream, "media", seq, seq.to_bytes(4, "big") * 40)
        await ping(alice, "all-read")  # relay one has handled every frame
        dropped = metric(one, "qsecret_relay_media_dropped_total", '{why="link"}')
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    assert sent - MEDIA_QUEUE - 64 <= dropped <= sent - MEDIA_QUEUE
    await bob.wait(lambda: len(frames(bob, stream)) >= sent - dropped, 20)
    seqs = [f.seq for f in frames(bob, stream)]
    assert len(seqs) == sent - dropped and seqs == sorted(set(seqs))
    assert all(f.payload == f.seq.to_bytes(4, "big") * 40 for f in frames(bob, stream))
    assert not alice.errors and not bob.errors
    await alice.close()
    await bob.close()
