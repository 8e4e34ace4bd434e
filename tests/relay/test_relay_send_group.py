"""Group fan-out at the relay: one upload, one durable envelope per recipient, one answer."""

from __future__ import annotations

import os
import time
from pathlib import Path

from relay import wire
from tests.relay.harness import Client, Identity, RelayProcess, start_relay
from tests.relay.stores import KINDS

RELAY_STORES = KINDS  # the `relay` fixture runs these tests on SQLite and on Redis


def _stored_groups(client: Client) -> list[wire.StoredGroup]:
    return [e for e in client.events if isinstance(e, wire.StoredGroup)]


async def _group_send(client: Client, to: list[str], body: bytes,
                      msg: str | None = None) -> str:
    msg = client.conn.send_group(to, body, msg_id=msg)
    await client.flush()
    return msg


async def test_one_upload_reaches_online_and_offline_members_once_each(
        relay: RelayProcess) -> None:
    alice = await Client(relay.url, Identity("alice")).connect()
    bob = await Client(relay.url, Identity("bob")).connect()
    carol_id = Identity("carol")
    carol = await Client(relay.url, carol_id).connect()
    await carol.close()  # carol is offline: her copy waits in the queue
    body = os.urandom(300)
    msg = await _group_send(alice, ["bob", "carol"], body)
    await alice.wait(lambda: _stored_groups(alice))
    assert _stored_groups(alice) == [wire.StoredGroup(msg, ())]
    await bob.wait(lambda: bob.delivered)
    got = bob.delivered[0]
    assert (got.msg, got.sender, got.body) == (wire.fanout_msg_id(msg, "bob"), "alice", body)
    carol = await Client(relay.url, carol_id).connect()
    await carol.wait(lambda: carol.delivered)
    assert carol.delivered[0].msg == wire.fanout_msg_id(msg, "carol")
    assert carol.delivered[0].body == body
    # The same group envelope again (a resend after a reconnect): a duplicate for every
    # copy. Online members may see it again live (as for any resent send: it carries
    # the same message ID, which their client drops); nothing new is queued.
    await _group_send(alice, ["bob", "carol"], body, msg=msg)
    await alice.wait(lambda: len(_stored_groups(alice)) == 2)
    assert _stored_groups(alice)[1] == wire.StoredGroup(msg, ())
    assert {d.msg for d in bob.delivered} == {wire.fanout_msg_id(msg, "bob")}
    await carol.close()
    carol = await Client(relay.url, carol_id).connect()
    assert carol.auth_ok is not None and carol.auth_ok.queued == 0
    for client in (alice, bob, carol):
        await client.close()


async def test_unknown_and_full_recipients_are_named_and_the_rest_delivered(
        tmp_path: Path) -> None:
    relay = start_relay(tmp_path / "relay", "--quota", "2", "--sender-share", "1.0")
    try:
        alice = await Client(relay.url, Identity("alice")).connect()
        dave_id = Identity("dave")
        dave = await Client(relay.url, dave_id).connect()
        await dave.close()
        bob = await Client(relay.url, Identity("bob")).connect()
        for index in range(2):  # fill dave's queue (quota 2)
            await alice.send("dave", b"filler %d" % index)
        await alice.wait(lambda: len(alice.stored) == 2)
        msg = await _group_send(alice, ["bob", "dave", "nobody"], b"to the group")
        await alice.wait(lambda: _stored_groups(alice))
        (answer,) = _stored_groups(alice)
        assert answer.msg == msg
        assert dict(answer.refused) == {"dave": "quota_exceeded",
                                        "nobody": "unknown_recipient"}
        await bob.wait(lambda: bob.delivered)
        assert bob.delivered[0].body == b"to the group"
        for client in (alice, bob):
            await client.close()
    finally:
        relay.stop()


async def test_a_group_send_costs_one_rate_token_per_recipient(tmp_path: Path) -> None:
    """A frame naming 99 recipients does the work of 99 sends: at 50 frames/s with a burst
    of 100, two such frames take about 2 s to be admitted, not an instant."""
    relay = start_relay(tmp_path / "relay", "--rate", "50", "--burst", "100")
    try:
        alice = await Client(relay.url, Identity("alice")).connect()
        members = [f"m{i}" for i in range(wire.MAX_GROUP_RECIPIENTS)]
        for handle in members[:3]:
            member = await Client(relay.url, Identity(handle)).connect()
            await member.close()
        started = time.monotonic()
        for _ in range(3):
            await _group_send(alice, members, b"x")
        await alice.wait(lambda: len(_stored_groups(alice)) == 3, timeout=30)
        elapsed = time.monotonic() - started
        # 3 x 99 tokens against a burst of 100 at 50/s: at least (297 - 100) / 50 s.
        assert elapsed >= (3 * 99 - 100) / 50 * 0.9, elapsed
        await alice.close()
    finally:
        relay.stop()


def test_send_group_frames_are_checked() -> None:
    good = wire.SendGroup("a" * 32, ("bob", "carol"), b"x")
    assert wire.parse_client_frame(good.encode()) == good
    for bad in ('{"v":1,"t":"send_group","msg":"' + "a" * 32 + '","to":["bob","bob"],'
                '"body":"eA=="}',
                '{"v":1,"t":"send_group","msg":"' + "a" * 32 + '","to":[],"body":"eA=="}',
                '{"v":1,"t":"send_group","msg":"' + "a" * 32 + '","to":'
                + str([f"u{i}" for i in range(100)]).replace("'", '"') + ',"body":"eA=="}'):
        try:
            wire.parse_client_frame(bad)
        except wire.WireError as exc:
            assert exc.code == "bad_field"
        else:
            raise AssertionError(f"accepted {bad[:60]}")
    assert wire.fanout_msg_id("a" * 32, "bob") != wire.fanout_msg_id("a" * 32, "carol")
