"""Relay memory is bounded by its configuration, not by what clients do (issue 14).

A real relay process, small limits, a queue of large envelopes for one handle. Its
connections never ack (some read, some stop reading altogether), logins beyond the
handle's session cap are refused with ``too_many_sessions`` and close 1013, and
connections that open and close again and again free what they held at once: the
relay's anonymous memory stays within the README's formula
(:func:`relay.memory.handle_bound`, :func:`relay.memory.connection_bound`) computed
for the limits the relay was started with. Redelivery re-reads from the store and
sends the same bytes as the first delivery. Waits are bounded; nothing is timed.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import weakref
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection as WsConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from relay import wire
from relay.config import RelayConfig
from relay.memory import connection_bound, handle_bound, unread_limit
from relay.server import Relay
from relay.session import Session
from relay.wire.frames import MAX_REQ_ID_CHARS
from tests.relay.harness import Client, Identity, RelayProcess, start_relay
from tests.relay.test_relay_file_streams import metric, wait_metric

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads the relay's memory from /proc")

BODY_BYTES = 60_000  # near MAX_ENVELOPE_BYTES (65,536)
QUEUED = 600  # envelopes queued for bob: 36 MB, far more than any window below
WINDOW = 512  # the default: in flight by count, the relay's old limit
WINDOW_BYTES = 256 * 1024
SESSIONS = 4


def rss_anon(relay: RelayProcess) -> int:
    """The relay's anonymous resident memory (its heap; not the store file's mapped pages)."""
    for line in Path(f"/proc/{relay.proc.pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc status")


def small_relay(tmp_path: Path) -> tuple[RelayProcess, RelayConfig]:
    """A relay with the limits under test, and the same limits as a RelayConfig."""
    config = RelayConfig(tmp_path / "relay", window=WINDOW, window_bytes=WINDOW_BYTES,
                         max_sessions_per_handle=SESSIONS, redeliver_after=1.0)
    # One sender fills bob's queue here: shares off (they would stop alice at a quarter).
    relay = start_relay(config.data_dir, "--sync", "normal", "--sender-share", "1",
                        "--window", str(WINDOW),
                        "--window-bytes", str(WINDOW_BYTES),
                        "--max-sessions-per-handle", str(SESSIONS), "--redeliver-after", "1")
    return relay, config


async def login(relay: RelayProcess, identity: Identity, **kw: object) -> Client:
    return await Client(relay.url, identity, relay_id=relay.relay_id, **kw).connect()  # type: ignore[arg-type]


async def fill_queue(relay: RelayProcess) -> Identity:
    """Register bob and queue QUEUED large envelopes from alice for him, all confirmed."""
    sender, recipient = Identity("alice"), Identity("bob")
    await (await login(relay, recipient)).close()
    client = await login(relay, sender)
    for _ in range(QUEUED):
        await client.send(recipient.handle, os.urandom(BODY_BYTES))
    await client.wait(lambda: len(client.stored) == QUEUED, 60)
    assert all(dup is False for dup in client.stored.values())
    await client.close()
    return recipient


async def stalled_login(relay: RelayProcess, identity: Identity) -> WsConnection:
    """Log in, then never read again: websockets stops reading after a frame or two, so
    what the relay sends piles up in the socket and then in the relay."""
    ws = await ws_connect(relay.url, compression=None, max_size=wire.MAX_FRAME_BYTES,
                          max_queue=2)
    conn = wire.ClientConnection(identity.handle, identity.keypair.public_key, identity.sign,
                                 expected_relay_id=relay.relay_id)
    while True:
        events = conn.receive(await asyncio.wait_for(ws.recv(), 10))
        for frame in conn.data_to_send():
            await ws.send(frame)
        if any(isinstance(event, wire.AuthOk) for event in events):
            return ws
        assert not any(isinstance(event, wire.Error) for event in events), events


async def refused_login(relay: RelayProcess, identity: Identity) -> tuple[wire.Error, int | None]:
    """A login over the session cap: the error frame it gets and the close code."""
    client = Client(relay.url, identity, relay_id=relay.relay_id)
    await client.connect(wait_auth=False)
    assert client.closed is not None
    await client.wait(lambda: client.closed.done(), 10)  # type: ignore[union-attr]
    assert client.auth_ok is None
    code, _ = client.closed.result()
    return client.errors[-1], code


async def test_connections_that_never_ack_stay_within_the_handle_bound(tmp_path: Path) -> None:
    relay, config = small_relay(tmp_path)
    try:
        bob = await fill_queue(relay)
        baseline = rss_anon(relay)
        readers = [await login(relay, bob, auto_ack=False) for _ in range(SESSIONS // 2)]
        stalled = [await stalled_login(relay, bob) for _ in range(SESSIONS - len(readers))]
        for _ in range(2):  # beyond the cap: refused, nothing held for them
            error, code = await refused_login(relay, bob)
            assert error.code == "too_many_sessions" and code == wire.CLOSE_TRY_AGAIN
        # The readers hold a full byte window (never the count window: WINDOW frames of
        # this size would be 45 MB each) and get it again after each redeliver interval.
        per_window = WINDOW_BYTES // (BODY_BYTES * 4 // 3) + 1
        for reader in readers:
            await reader.wait(lambda r=reader: len(r.delivered) >= per_window, 20)
        await wait_metric(relay, "qsecret_relay_redeliveries_total",
                          lambda v: v >= 3 * per_window * len(readers), 30)
        for reader in readers:
            assert len({d.seq for d in reader.delivered}) == per_window
        grown = rss_anon(relay) - baseline
        assert grown <= handle_bound(config), (grown, handle_bound(config))
        for reader in readers:
            await reader.close()
        for ws in stalled:
            ws.transport.abort()
    finally:
        relay.stop()


async def test_open_close_cycles_free_what_each_connection_held(tmp_path: Path) -> None:
    relay, config = small_relay(tmp_path)
    try:
        bob = await fill_queue(relay)
        baseline = rss_anon(relay)
        per_window = WINDOW_BYTES // (BODY_BYTES * 4 // 3) + 1
        peak = 0
        for _ in range(8):
            reader = await login(relay, bob, auto_ack=False)
            await reader.wait(lambda r=reader: len(r.delivered) >= per_window, 20)
            stalled = await stalled_login(relay, bob)
            stalled.transport.abort()
            await reader.close()
            peak = max(peak, rss_anon(relay) - baseline)
        # Eight cycles of two connections cost no more than two connections at once.
        assert peak <= 2 * connection_bound(config), (peak, 2 * connection_bound(config))
    finally:
        relay.stop()


async def test_the_session_cap_refuses_a_login_and_frees_a_place_on_close(
        tmp_path: Path) -> None:
    relay = start_relay(tmp_path / "relay", "--max-sessions-per-handle", "2")
    try:
        bob, carol = Identity("bob"), Identity("carol")
        first, second = await login(relay, bob), await login(relay, bob)
        error, code = await refused_login(relay, bob)
        assert (error.code, code) == ("too_many_sessions", wire.CLOSE_TRY_AGAIN)
        assert "2 connections" in error.message
        other = await login(relay, carol)  # another handle is not affected
        # The two sessions still work: a message reaches both.
        await other.send("bob", b"still here")
        for client in (first, second):
            await client.wait(lambda c=client: c.delivered, 10)
            assert client.delivered[0].body == b"still here"
        await first.close()
        third = await login(relay, bob)  # a place is free again
        assert third.auth_ok is not None
        for client in (second, third, other):
            await client.close()
    finally:
        relay.stop()


async def test_a_redelivery_sends_the_same_bytes_again(tmp_path: Path) -> None:
    relay = start_relay(tmp_path / "relay", "--redeliver-after", "1")
    try:
        alice, bob = Identity("alice"), Identity("bob")
        receiver = await login(relay, bob, auto_ack=False)
        raw: list[str] = []
        receive = receiver.conn.receive

        def record(data: str | bytes) -> list[object]:
            if isinstance(data, str) and '"t":"deliver"' in data:
                raw.append(data)
            return receive(data)

        receiver.conn.receive = record  # type: ignore[method-assign]
        sender = await login(relay, alice)
        bodies = [os.urandom(size) for size in (1, 1000, wire.MAX_ENVELOPE_BYTES)]
        for body in bodies:
            await sender.send("bob", body)
        await receiver.wait(lambda: len(receiver.delivered) >= 2 * len(bodies), 20)
        first, again = raw[:len(bodies)], raw[len(bodies):2 * len(bodies)]
        assert again == first
        assert [d.body for d in receiver.delivered[:len(bodies)]] == bodies
        # Acked, it is never sent again: a later connection gets nothing.
        receiver.conn.ack([d.seq for d in receiver.delivered[:len(bodies)]])
        await receiver.flush()
        await receiver.close()
        later = await login(relay, bob)
        assert later.auth_ok is not None and later.auth_ok.queued == 0
        await later.close()
        await sender.close()
    finally:
        relay.stop()


async def test_a_closed_session_is_freed_without_the_cyclic_gc(tmp_path: Path) -> None:
    """No reference cycle keeps a closed connection (its writer task's cancellation, the
    inline hook): reference counting frees it, not the sweeper's full pass 600 s later."""
    sessions: list[weakref.ref[Session]] = []
    relay = Relay(RelayConfig(tmp_path / "relay", port=0, sync="NORMAL"))
    await relay.start()
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        url = f"ws://127.0.0.1:{relay.port}/"
        sender = await Client(url, Identity("alice")).connect()
        receiver = await Client(url, Identity("bob"), auto_ack=False).connect()
        sessions.extend(weakref.ref(s) for s in relay.sessions)
        assert len(sessions) == 2
        for _ in range(5):
            await sender.send("bob", os.urandom(1000))
        await receiver.wait(lambda: len(receiver.delivered) == 5, 10)
        await receiver.close()
        await sender.close()
        # Gone from the relay, then freed by reference counting alone (with the GC off,
        # a session in a cycle would stay and this would time out).
        await asyncio.wait_for(_until(lambda: not relay.sessions), 10)
        await asyncio.wait_for(_until(lambda: all(ref() is None for ref in sessions)), 10)
    finally:
        if enabled:
            gc.enable()
        await relay.stop()


async def test_a_client_that_never_reads_its_answers_is_dropped(tmp_path: Path) -> None:
    """Pings (or sends, fetches) without reading the answers: once more text is unread than
    a reading client could leave (window and replies), the relay drops the connection and
    frees what it held. A reading client asking as much is not dropped."""
    small = 64 * 1024
    config = RelayConfig(tmp_path / "relay", window_bytes=small, unread_reply_bytes=small)
    relay = start_relay(config.data_dir, "--window-bytes", str(small),
                        "--unread-reply-bytes", str(small),
                        "--rate", "1000000", "--burst", "1000000")
    ping = wire.Ping("p" * MAX_REQ_ID_CHARS).encode()
    try:
        baseline = rss_anon(relay)
        mallory = await stalled_login(relay, Identity("mallory"))
        loop = asyncio.get_running_loop()
        deadline, sent, dropped = loop.time() + 60, 0, False
        # Bounded: the kernel's socket buffers take a few MB of pongs before the relay
        # holds any; the limit is about 0.4 MB of them after that.
        while not dropped and sent < 1_000_000 and loop.time() < deadline:
            try:
                for _ in range(100):
                    await mallory.send(ping)
                    sent += 1
            except ConnectionClosed:
                dropped = True
        assert dropped, f"{sent} pings unread and still connected"
        assert await wait_metric(relay, 'qsecret_relay_closed_total{code="unread"}',
                                 lambda v: v >= 1) == 1
        grown = rss_anon(relay) - baseline
        assert grown <= connection_bound(config), (grown, connection_bound(config))
        assert unread_limit(config) < sent * len(ping)  # the pongs would have been more
        # The same number of pings from a client that reads: every one answered.
        alice = await login(relay, Identity("alice"))
        pongs = 0
        record = alice._record

        def count_pongs(event: object) -> None:
            nonlocal pongs
            pongs += isinstance(event, wire.Pong)
            record(event)

        alice._record = count_pongs  # type: ignore[method-assign]
        for start in range(0, sent, 1000):
            for _ in range(min(1000, sent - start)):
                await alice.send_raw(ping)
            await alice.wait(lambda s=start: pongs >= s, 30)
        await alice.wait(lambda: pongs == sent, 30)
        assert alice.closed is not None and not alice.closed.done()
        assert metric(relay, 'qsecret_relay_closed_total{code="unread"}') == 1
        await alice.close()
    finally:
        relay.stop()


async def _until(predicate) -> None:  # type: ignore[no-untyped-def]
    while not predicate():
        await asyncio.sleep(0.01)
