"""Group file streams: the opener uploads each frame once, the relay spools a copy for
every recipient (``stream_open_group``), each delivered and acked on its own.

Real relay subprocesses on loopback, on SQLite and on Redis. The counts come from the
relay's /metrics: ``qsecret_relay_group_file_uploads_total`` (frames uploaded) and
``qsecret_relay_file_frames_total{path="fanout"}`` (copies stored), never from timing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from relay import wire
from tests.relay.harness import Client, Identity, RelayProcess, start_relay
from tests.relay.stores import KINDS
from tests.relay.test_relay_file_streams import (
    chunks,
    connect,
    frames,
    metric,
    ping,
    receive,
    register,
    send_all,
)

RELAY_STORES = KINDS

pytestmark = pytest.mark.slow

UPLOADS = "qsecret_relay_group_file_uploads_total"
FANOUT = 'qsecret_relay_file_frames_total{path="fanout"}'


async def open_group(client: Client, stream: bytes, to: list[str], req_id: str) -> wire.Frame:
    """stream_open_group; the StreamOk or Error that answers it."""
    await client.flush()
    await client.send_raw(wire.StreamOpenGroup(stream.hex(), tuple(to), req_id).encode())

    def answer() -> wire.Frame | None:
        return next((e for e in client.events if isinstance(e, (wire.StreamOk, wire.Error))
                     and e.id == req_id), None)

    await client.wait(answer)
    found = answer()
    assert found is not None
    return found


async def test_one_upload_is_spooled_for_every_recipient_and_acked_by_each(
        relay: RelayProcess) -> None:
    alice = Identity("alice")
    members = [Identity("bob"), Identity("carol"), Identity("dave")]
    await register(relay, *members)
    bob = await connect(relay, members[0])  # online; carol and dave are not
    sender = await connect(relay, alice)
    stream = os.urandom(16)
    assert isinstance(await open_group(sender, stream, ["bob", "carol", "dave"], "o1"),
                      wire.StreamOk)
    await bob.wait(lambda: any(isinstance(e, wire.StreamIncoming) and e.sender == "alice"
                               for e in bob.events))
    sent = chunks(12, size=5_000)
    await send_all(sender, stream, sent)
    await ping(sender, "p1")  # every copy is durable now

    assert metric(relay, UPLOADS) == len(sent)  # uploaded once...
    assert metric(relay, FANOUT) == 3 * len(sent)  # ...spooled three times
    expected = [(seq, payload) for seq, payload in sent.items()]

    await bob.wait(lambda: len(frames(bob, stream)) >= len(sent), 20)
    assert [(f.seq, f.payload) for f in frames(bob, stream)] == expected
    bob.stream_ack(stream, list(sent))
    await ping(bob, "a1")
    # bob's acks deleted bob's copies only: carol's and dave's stay.
    assert metric(relay, "qsecret_relay_spool_bytes") == 2 * sum(len(p) + 32
                                                                for p in sent.values())
    # The upload is over: the opener's close keeps the copies not yet delivered.
    sender.stream_close(stream)
    await ping(sender, "p2")

    for member in members[1:]:
        client, got = await receive(relay, member, stream, len(sent))
        assert [(f.seq, f.payload) for f in got] == expected
        client.stream_ack(stream, list(sent))
        await ping(client, "a")
        await client.close()
    assert metric(relay, "qsecret_relay_spool_bytes") == 0
    assert not sender.errors and not bob.errors
    await bob.close()
    await sender.close()


async def test_only_the_opener_sends_and_recipients_must_exist(relay: RelayProcess) -> None:
    alice, bob = Identity("alice"), Identity("bob")
    await register(relay, bob)
    sender = await connect(relay, alice)
    refused = await open_group(sender, os.urandom(16), ["bob", "nobody"], "o1")
    assert isinstance(refused, wire.Error) and refused.code == "unknown_recipient"
    assert "nobody" in refused.message
    mine = await open_group(sender, os.urandom(16), ["alice", "bob"], "o2")
    assert isinstance(mine, wire.Error) and mine.code == "bad_field"

    stream = os.urandom(16)
    assert isinstance(await open_group(sender, stream, ["bob"], "o3"), wire.StreamOk)
    member = await connect(relay, bob)
    member.send_chunk(stream, "file", 1, b"not yours to send")
    await member.flush()
    error = await member.next_error()
    assert error.code == "bad_binary_frame" and "opener" in error.message
    assert metric(relay, UPLOADS) == 0 and metric(relay, FANOUT) == 0
    await member.close()
    await sender.close()


async def test_spool_rewind_sends_what_was_not_acked_again_in_order(
        relay: RelayProcess) -> None:
    """A member that dropped frames (a group file whose offer it had not read yet) asks
    for its spool again on the same connection: the unacked frames come again, in order."""
    alice, bob = Identity("alice"), Identity("bob")
    await register(relay, bob)
    sender = await connect(relay, alice)
    stream = os.urandom(16)
    assert isinstance(await open_group(sender, stream, ["bob"], "o1"), wire.StreamOk)
    sent = chunks(10, size=3_000)
    await send_all(sender, stream, sent)
    await ping(sender, "p1")
    member, got = await receive(relay, bob, stream, len(sent))
    assert [f.seq for f in got] == list(sent)
    member.stream_ack(stream, list(sent)[:4])  # took the first four; dropped the rest
    await ping(member, "a1")
    await member.send_raw(wire.SpoolRewind().encode())
    await member.wait(lambda: len(frames(member, stream)) >= len(sent) + 6, 20)
    again = frames(member, stream)[len(sent):]
    assert [(f.seq, f.payload) for f in again] == [(s, sent[s]) for s in list(sent)[4:]]
    assert not member.errors
    await member.close()
    await sender.close()


async def test_an_ended_group_upload_frees_its_slot_and_goes_with_the_last_copy(
        tmp_path: Path, relay_store: tuple[str, ...]) -> None:
    """A member offline for days must not use up the opener's open streams: once the opener
    closes a group upload it stops counting (its copies stay), and its registration goes
    when the last member acks its copy."""
    relay = start_relay(tmp_path / "relay", "--max-file-streams", "2", *relay_store)
    try:
        alice, bob, carol = Identity("alice"), Identity("bob"), Identity("carol")
        await register(relay, bob, carol)
        sender = await connect(relay, alice)
        sent = chunks(3, size=2_000)
        ended = [os.urandom(16) for _ in range(3)]
        for index, stream in enumerate(ended):  # bob and carol are offline throughout
            assert isinstance(await open_group(sender, stream, ["bob", "carol"], f"o{index}"),
                              wire.StreamOk)
            await send_all(sender, stream, sent)
            sender.stream_close(stream)
            await ping(sender, f"p{index}")
        # Three group files sent with a limit of two open streams; an open one still counts.
        open_ones = [os.urandom(16) for _ in range(3)]
        for index, stream in enumerate(open_ones[:2]):
            assert isinstance(await open_group(sender, stream, ["bob"], f"u{index}"),
                              wire.StreamOk)
        third = await open_group(sender, open_ones[2], ["bob"], "u2")
        assert isinstance(third, wire.Error) and third.code == "too_many_streams"

        # The registration stays while a copy is spooled: its id is still taken...
        member, got = await receive(relay, bob, ended[0], len(sent))
        assert [(f.seq, f.payload) for f in got] == list(sent.items())
        member.stream_ack(ended[0], list(sent))
        await ping(member, "b")
        taken = await open_group(member, ended[0], ["carol"], "t1")
        assert isinstance(taken, wire.Error) and "taken" in taken.message
        await member.close()
        # ...and carol still gets her copies; her last ack drops it: the id is free again.
        member, got = await receive(relay, carol, ended[0], len(sent))
        assert [(f.seq, f.payload) for f in got] == list(sent.items())
        member.stream_ack(ended[0], list(sent))
        await ping(member, "c")
        assert isinstance(await open_group(member, ended[0], ["bob"], "t2"), wire.StreamOk)
        assert [error.id for error in sender.errors] == ["u2"]  # the one refusal above
        await member.close()
        await sender.close()
    finally:
        relay.stop()
