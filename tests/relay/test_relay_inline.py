"""The relay handles sends, acks and pings where it reads them: order and limits still hold."""

from __future__ import annotations

import asyncio
import os

from relay import wire
from tests.relay.harness import Client, Identity, RelayProcess
from tests.relay.test_relay_bad_input import next_frame, open_peer


async def test_frames_behind_a_slow_one_keep_their_order(relay: RelayProcess) -> None:
    """A prekeys upload waits for its 51 signature checks: what follows must not overtake it.

    The pings trickle in while the checks run, each when nothing is queued for the
    handler: only the handler's own state says they must wait.
    """
    identity = Identity(f"u{os.urandom(4).hex()}")
    peer = await open_peer(relay, identity)
    bundle = wire.sign_bundle(identity.handle, identity.keypair.public_key, b"signed-part",
                              [(i, os.urandom(32)) for i in range(50)], identity.sign)
    await peer.ws.send(wire.PrekeysUpload(bundle, "up").encode())
    for i in range(20):
        await asyncio.sleep(0.002)
        await peer.ws.send(wire.Ping(f"after{i}").encode())
    frames = [await next_frame(peer.ws) for _ in range(21)]
    assert isinstance(frames[0], wire.PrekeysOk) and frames[0].id == "up", frames[0]
    assert [f.id for f in frames[1:]] == [f"after{i}" for i in range(20)]  # type: ignore[attr-defined]
    await peer.ws.close()


async def test_many_sends_in_one_read_all_delivered_in_order(relay: RelayProcess) -> None:
    """300 sends written back to back (several per read): every one stored, delivered in order."""
    alice = await Client(relay.url, Identity("alice")).connect()
    bob = await Client(relay.url, Identity("bob")).connect()
    msgs = [alice.conn.send("bob", os.urandom(100)) for _ in range(300)]
    await alice.flush()
    await bob.wait(lambda: len({d.msg for d in bob.delivered}) >= 300)
    await alice.wait(lambda: len(alice.stored) >= 300)
    # On a starved machine the 2 s redelivery may repeat some (same seq): order of firsts.
    firsts: dict[str, int] = {}
    for deliver in bob.delivered:
        assert firsts.setdefault(deliver.msg, deliver.seq) == deliver.seq
    assert list(firsts) == msgs
    assert set(alice.stored) == set(msgs) and not any(alice.stored.values())
    await alice.close()
    await bob.close()
