"""A call's media stream closed by one end: what the other end still had on the way (frames,
its own stream_close) is answered with an error naming the stream, never a strike."""

from __future__ import annotations

from relay import wire
from tests.relay.harness import Client, Identity, RelayProcess

ABUSE_LIMIT = 16  # relay.config.RelayConfig.abuse_limit: strikes that close a connection


async def test_frames_crossing_the_peers_close_are_no_abuse(relay: RelayProcess) -> None:
    alice = await Client(relay.url, Identity("alice")).connect()
    bob = await Client(relay.url, Identity("bob")).connect()
    media = alice.open_stream("bob", "media", req_id="m1")
    await alice.flush()
    await alice.wait(lambda: any(isinstance(e, wire.StreamOk) and e.id == "m1"
                                 for e in alice.events))
    bob.stream_close(media)  # bob hangs up ...
    await bob.flush()
    await alice.wait(lambda: any(isinstance(e, wire.StreamClose) for e in alice.events))
    for seq in range(ABUSE_LIMIT + 4):  # ... while alice's frames were still on their way
        alice.send_chunk(media, "media", seq, b"late")
    alice.stream_close(media)
    await alice.flush()
    await alice.wait(lambda: len(alice.errors) == ABUSE_LIMIT + 5)
    assert {(e.code, e.stream) for e in alice.errors} == {("unknown_stream", media.hex())}
    # Still connected: a message goes through.
    await alice.send("bob", b"still here")
    await bob.wait(lambda: any(isinstance(e, wire.Deliver) for e in bob.events))
    await alice.close()
    await bob.close()
