"""Login, send, receive, ack, offline delivery, impersonation: a real relay process."""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import subprocess
import sys
import urllib.request

import pytest
from websockets.asyncio.client import connect

from relay import wire
from tests.relay.harness import ROOT, Client, Identity, RelayProcess, start_relay
from tests.relay.stores import KINDS

RELAY_STORES = KINDS  # the `relay` fixture runs these tests on SQLite and on Redis


async def test_login_send_receive_ack(relay: RelayProcess) -> None:
    alice = await Client(relay.url, Identity("alice"), relay_id=relay.relay_id).connect()
    bob = await Client(relay.url, Identity("bob"), relay_id=relay.relay_id).connect()
    assert alice.auth_ok is not None and alice.auth_ok.new and alice.auth_ok.queued == 0
    body = os.urandom(256)
    msg = await alice.send("bob", body)
    await bob.wait(lambda: bob.delivered)
    await alice.wait(lambda: msg in alice.stored)
    got = bob.delivered[0]
    assert (got.msg, got.sender, got.body) == (msg, "alice", body)
    assert alice.stored[msg] is False
    # Same message ID again: the relay says duplicate and delivers nothing new.
    await alice.send("bob", body, msg_id=msg)
    await alice.wait(lambda: alice.stored[msg] is True)
    await bob.close()
    # Bob acked: nothing is waiting for him on his next login.
    bob2 = await Client(relay.url, bob.identity, relay_id=relay.relay_id).connect()
    assert bob2.auth_ok is not None and bob2.auth_ok.queued == 0 and not bob2.auth_ok.new
    await alice.close()
    await bob2.close()


async def test_offline_delivery_and_unacked_redelivery(relay: RelayProcess) -> None:
    alice = await Client(relay.url, Identity("alice")).connect()
    bob_id = Identity("bob")
    bob = await Client(relay.url, bob_id).connect()
    await bob.close()
    sent = [await alice.send("bob", f"offline {i}".encode()) for i in range(20)]
    await alice.wait(lambda: all(m in alice.stored for m in sent))
    # Bob logs in without acking: everything arrives, in order.
    bob = await Client(relay.url, bob_id, auto_ack=False).connect()
    assert bob.auth_ok is not None and bob.auth_ok.queued == 20
    await bob.wait(lambda: len(bob.delivered) >= 20)
    assert [d.msg for d in bob.delivered[:20]] == sent
    # Unacked deliveries come again on the same connection (relay started with
    # --redeliver-after 2) ...
    await bob.wait(lambda: len(bob.delivered) >= 40, timeout=10)
    await bob.close()
    # ... and on the next connection; acking them empties the queue.
    bob = await Client(relay.url, bob_id).connect()
    await bob.wait(lambda: len({d.msg for d in bob.delivered}) == 20)
    await bob.close()
    bob = await Client(relay.url, bob_id).connect()
    assert bob.auth_ok is not None and bob.auth_ok.queued == 0
    await bob.close()
    await alice.close()


async def test_impersonation_refused(relay: RelayProcess) -> None:
    alice = await Client(relay.url, Identity("alice")).connect()
    await alice.close()
    # Another key claiming "alice": refused three times, then closed with 1008.
    mallory = Client(relay.url, Identity("alice"))
    await mallory.connect(wait_auth=False)
    await mallory.wait(lambda: len(mallory.errors) >= 3 or mallory.closed.done())
    assert mallory.errors[0].code == "handle_taken"
    assert (await mallory.closed)[0] == wire.CLOSE_POLICY
    assert mallory.auth_ok is None


async def test_cannot_read_or_ack_another_queue(relay: RelayProcess) -> None:
    alice = await Client(relay.url, Identity("alice")).connect()
    bob_id = Identity("bob")
    bob = await Client(relay.url, bob_id).connect()
    await bob.close()
    msg = await alice.send("bob", b"for bob only")
    await alice.wait(lambda: msg in alice.stored)
    # Mallory logs in as herself and tries to ack every plausible seq of Bob's queue.
    mallory = await Client(relay.url, Identity("mallory")).connect()
    mallory.conn.ack(range(1, 200))
    await mallory.flush()
    ping_done = len(mallory.events)
    mallory.conn.ping()
    await mallory.flush()
    await mallory.wait(lambda: any(isinstance(e, wire.Pong) for e in mallory.events[ping_done:]))
    # A signature by Mallory's key over Bob's handle cannot log in as Bob (handle bound).
    fake_bob = Client(relay.url, Identity("bob", mallory.identity.keypair))
    await fake_bob.connect(wait_auth=False)
    await fake_bob.wait(lambda: fake_bob.errors)
    assert fake_bob.errors[0].code == "handle_taken"
    assert not fake_bob.delivered and not mallory.delivered
    await fake_bob.close()
    bob = await Client(relay.url, bob_id).connect()
    assert bob.auth_ok is not None and bob.auth_ok.queued == 1
    await bob.wait(lambda: bob.delivered)
    assert bob.delivered[0].msg == msg
    for client in (alice, bob, mallory):
        await client.close()


async def test_healthz_metrics_and_404(relay: RelayProcess) -> None:
    alice = await Client(relay.url, Identity("alice")).connect()
    await alice.send_raw("not json")
    await alice.next_error()
    with urllib.request.urlopen(relay.http_url + "/healthz", timeout=5) as response:
        assert response.status == 200 and response.read() == b"ok\n"
    with urllib.request.urlopen(f"{relay.metrics_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in text.splitlines() if line and not line.startswith("#")}
    assert samples["qsecret_relay_connections"] == 1
    assert samples['qsecret_relay_errors_total{code="bad_json"}'] == 1
    assert samples["qsecret_relay_queue_depth"] == 0
    assert "# TYPE qsecret_relay_frames_in_total counter" in text
    assert samples["qsecret_relay_frames_in_total"] >= 2  # auth and the bad frame
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(relay.http_url + "/nope", timeout=5)
    assert info.value.code == 404
    await alice.close()


async def test_latency_histograms_show_commits_deliveries_and_acks(
        relay: RelayProcess) -> None:
    """An operator reads p99 off /metrics: store commits, time at the relay, time to ack."""
    alice = await Client(relay.url, Identity("alice")).connect()
    bob = await Client(relay.url, Identity("bob")).connect()
    for index in range(5):
        await alice.send("bob", b"histogram %d" % index)
    await bob.wait(lambda: len(bob.delivered) == 5)
    await alice.wait(lambda: len(alice.stored) == 5)

    def counts() -> dict[str, float]:
        with urllib.request.urlopen(f"{relay.metrics_url}/metrics", timeout=5) as response:
            text = response.read().decode()
        assert "# TYPE qsecret_relay_store_commit_seconds histogram" in text
        return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
                if line.endswith(tuple("0123456789.")) and "_seconds_count" in line}

    deadline = asyncio.get_running_loop().time() + 10
    while counts().get("qsecret_relay_ack_seconds_count", 0) < 5:  # bob's acks: async
        assert asyncio.get_running_loop().time() < deadline, counts()
        await asyncio.sleep(0.05)
    seen = counts()
    assert seen["qsecret_relay_delivery_wait_seconds_count"] == 5
    assert seen["qsecret_relay_store_commit_seconds_count"] >= 1
    await alice.close()
    await bob.close()


async def test_tls_self_signed_pinning(tmp_path) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(tmp_path / "tls", "--self-signed")
    try:
        assert relay.url.startswith("wss://") and relay.fingerprint is not None
        pinned = wire.parse_fingerprint(relay.fingerprint)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # trust comes from the pinned fingerprint below
        async with connect(relay.url, ssl=context, compression=None) as ws:
            der = ws.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
            assert wire.certificate_fingerprint(der) == pinned
        ok = await Client(relay.url, Identity("alice"), ssl_context=context,
                          tls_fingerprint=pinned).connect()
        await ok.close()
        # Signing another certificate's fingerprint (a man in the middle's view) fails.
        mitm = Client(relay.url, Identity("bob"), ssl_context=context,
                      tls_fingerprint=bytes(32))
        await mitm.connect(wait_auth=False)
        await mitm.wait(lambda: mitm.errors)
        assert mitm.errors[0].code == "auth_failed" and mitm.auth_ok is None
        await mitm.close()
    finally:
        relay.stop()
    # Restart: the same certificate, so the pin still holds.
    again = start_relay(tmp_path / "tls", "--self-signed")
    assert again.fingerprint == relay.fingerprint and again.relay_id == relay.relay_id
    again.stop()


def test_cli_refuses_missing_cert(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = subprocess.run(
        [sys.executable, "-m", "relay", "--data", str(tmp_path), "--cert", str(tmp_path / "x")],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2 and "--cert needs --key" in result.stderr


async def test_wrong_pinned_relay_id_is_refused_by_client(relay: RelayProcess) -> None:
    client = Client(relay.url, Identity("alice"), relay_id="qsr-someone-else")
    with pytest.raises(wire.WireError) as info:
        await client.connect(timeout=3)
    assert info.value.code == "wrong_relay"
    assert not client.conn.data_to_send()  # nothing was signed for the impostor


async def test_connection_limit_answers_503(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from websockets.exceptions import InvalidStatus

    relay = start_relay(tmp_path / "small", "--max-connections", "3")
    try:
        clients = [await Client(relay.url, Identity(f"c{i}")).connect() for i in range(3)]
        with pytest.raises(InvalidStatus) as info:
            await connect(relay.url, compression=None)
        assert info.value.response.status_code == 503
        await clients[0].close()
        await asyncio.sleep(0.2)  # the relay notices the close
        again = await Client(relay.url, clients[0].identity).connect()
        for client in [again, *clients[1:]]:
            await client.close()
    finally:
        relay.stop()


async def test_idle_timeout_closes_1001(tmp_path) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(tmp_path / "idle", "--idle-timeout", "1.5")
    try:
        client = await Client(relay.url, Identity("sleepy")).connect()
        assert client.closed is not None
        code, _ = await asyncio.wait_for(client.closed, 10)
        assert code == wire.CLOSE_GOING_AWAY
    finally:
        relay.stop()


async def test_binary_stream_between_two_users(relay: RelayProcess) -> None:
    alice = await Client(relay.url, Identity("alice")).connect()
    bob = await Client(relay.url, Identity("bob")).connect()
    stream = alice.open_stream("bob", "file", req_id="s1")
    await alice.flush()
    await alice.wait(lambda: any(isinstance(e, wire.StreamOk) for e in alice.events))
    await bob.wait(lambda: any(isinstance(e, wire.StreamIncoming) for e in bob.events))
    incoming = next(e for e in bob.events if isinstance(e, wire.StreamIncoming))
    assert (incoming.stream, incoming.sender, incoming.kind) == (stream.hex(), "alice", "file")
    chunks = [bytes([i]) * 60_000 for i in range(20)]
    for i, chunk in enumerate(chunks):
        alice.send_chunk(stream, "file", i, chunk, final=i == len(chunks) - 1)
    await alice.flush()

    def received() -> list[wire.BinaryFrame]:
        return [e for e in bob.events if isinstance(e, wire.BinaryFrame)]

    await bob.wait(lambda: len(received()) == len(chunks))
    assert [f.payload for f in received()] == chunks
    assert [f.seq for f in received()] == list(range(20)) and received()[-1].final
    # A file stream is durable: FINAL does not close it (stream_close does).
    alice.send_chunk(stream, "file", 20, b"after final")
    await alice.flush()
    await bob.wait(lambda: len(received()) == len(chunks) + 1)
    assert received()[-1].payload == b"after final"
    # A media stream is live only: FINAL closes it, and another frame on it is refused.
    media = alice.open_stream("bob", "media", req_id="m1")
    await alice.flush()
    await alice.wait(lambda: any(isinstance(e, wire.StreamOk) and e.id == "m1"
                                 for e in alice.events))
    alice.send_chunk(media, "media", 0, b"last", final=True)
    await alice.flush()
    await bob.wait(lambda: received()[-1].payload == b"last")
    alice.send_chunk(media, "media", 1, b"late")
    await alice.flush()
    assert (await alice.next_error()).code == "unknown_stream"
    await alice.close()
    await bob.close()


async def test_debug_logs_hold_no_envelope_contents(tmp_path) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(tmp_path / "logs", "--log-level", "debug")
    try:
        alice = await Client(relay.url, Identity("alice")).connect()
        bob = await Client(relay.url, Identity("bob")).connect()
        secret = b"TOP-SECRET-ENVELOPE-" + os.urandom(8).hex().encode()
        await alice.send("bob", secret)
        await bob.wait(lambda: bob.delivered)
        await alice.close()
        await bob.close()
        await asyncio.sleep(0.3)
    finally:
        relay.stop()
    output = "".join(relay.output)
    assert "authenticated handle=alice" in output  # debug logging was on
    for form in (secret, base64.b64encode(secret)):
        assert form.decode() not in output
    # websockets' own debug log prints (a prefix of) every frame: it must stay off.
    assert "< TEXT" not in output and "> TEXT" not in output
