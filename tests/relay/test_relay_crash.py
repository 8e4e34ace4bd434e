"""kill -9 of the relay in the middle of 10,000 envelopes, then restart: nothing acked is lost.

Four clients in a ring each send 2,500 envelopes to the next one, keeping up to
200 unconfirmed. When about 4,000 have been confirmed ("stored") the relay is
killed with SIGKILL and restarted on the same port and data directory. Clients
reconnect and resend what was never confirmed (same message IDs). The
application layer de-duplicates by (sender, message ID), as the real client
does. At the end, every confirmed envelope has reached its recipient's
application exactly once with its exact bytes, and nothing else has.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from relay import wire
from tests.relay.harness import Client, Identity, RelayProcess, start_relay

pytestmark = pytest.mark.slow

CLIENTS = 4
PER_CLIENT = 2_500
WINDOW = 200
KILL_AFTER = 4_000
DEADLINE = 90.0  # seconds for the whole exchange (bounded)


@dataclass
class App:
    """What one user's application knows: what it sent, what the relay confirmed, what it got."""

    identity: Identity
    peer: str
    sent: dict[str, bytes] = field(default_factory=dict)
    confirmed: set[str] = field(default_factory=set)
    received: dict[tuple[str, str], bytes] = field(default_factory=dict)
    transport_duplicates: int = 0

    def body(self, index: int) -> tuple[str, bytes]:
        msg = hashlib.sha256(f"{self.identity.handle}/{index}".encode()).hexdigest()[:32]
        return msg, f"{self.identity.handle}->{self.peer} #{index}".encode().ljust(256, b".")

    def on_deliver(self, frame: wire.Deliver) -> None:
        key = (frame.sender, frame.msg)
        if key in self.received:
            self.transport_duplicates += 1
            assert self.received[key] == frame.body
            return
        self.received[key] = frame.body


async def run_app(app: App, relay_box: list[RelayProcess], done: asyncio.Event) -> int:
    """Send everything, reconnecting (and resending the unconfirmed) until all is confirmed."""
    next_index = 0
    unconfirmed: list[wire.Send] = []
    connections = 0
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        relay = relay_box[0]
        client = Client(relay.url, app.identity, relay_id=relay.relay_id, resend=unconfirmed)
        client.on_deliver = app.on_deliver
        try:
            await client.connect(timeout=5)
        except (OSError, InvalidStatus, TimeoutError, RuntimeError):
            await asyncio.sleep(0.1)
            continue
        connections += 1
        await client.flush()  # the resends
        assert client.closed is not None
        while not client.closed.done():
            app.confirmed.update(client.stored)
            if next_index < PER_CLIENT and len(client.conn.unconfirmed) < WINDOW:
                msg, body = app.body(next_index)
                app.sent[msg] = body
                client.conn.send(app.peer, body, msg_id=msg)
                next_index += 1
                if next_index % 50 == 0 or next_index == PER_CLIENT:
                    try:
                        await client.flush()
                    except ConnectionClosed:
                        break
                continue
            if next_index == PER_CLIENT and not client.conn.unconfirmed and done.is_set():
                app.confirmed.update(client.stored)
                await client.close()
                return connections
            try:
                await client.flush()
                if next_index < PER_CLIENT:  # window full: wait for confirmations
                    await client.wait(lambda c=client: len(c.conn.unconfirmed) < WINDOW
                                      or c.closed.done(), timeout=0.5)
                else:  # all sent: wait for the last confirmations and the receivers
                    await asyncio.sleep(0.02)
            except (TimeoutError, ConnectionClosed):
                pass
        app.confirmed.update(client.stored)
        unconfirmed = list(client.conn.unconfirmed.values())
        await asyncio.sleep(0.05)
    raise AssertionError(f"{app.identity.handle} did not finish in {DEADLINE}s")


async def test_kill_9_mid_stream_loses_nothing_acked(tmp_path: Path) -> None:
    data = tmp_path / "relay"
    relay = start_relay(data)
    box = [relay]
    handles = [f"ring{i}" for i in range(CLIENTS)]
    apps = [App(Identity(h), handles[(i + 1) % CLIENTS]) for i, h in enumerate(handles)]
    # Register everyone first so no send meets an unknown recipient.
    for app in apps:
        await (await Client(relay.url, app.identity).connect()).close()
    everyone_received = asyncio.Event()
    tasks = [asyncio.create_task(run_app(app, box, everyone_received)) for app in apps]

    confirmed_before_kill = 0
    try:
        deadline = time.monotonic() + DEADLINE
        while sum(len(a.confirmed) for a in apps) < KILL_AFTER:
            assert time.monotonic() < deadline, "stream too slow to reach the kill point"
            await asyncio.sleep(0.005)
        confirmed_before_kill = sum(len(a.confirmed) for a in apps)
        relay.kill9()
        restarted = await asyncio.to_thread(start_relay, data, port=relay.port)
        box[0] = restarted
        assert restarted.relay_id == relay.relay_id

        def all_in() -> bool:
            return all(
                len(apps[(i + 1) % CLIENTS].received) >= PER_CLIENT for i in range(CLIENTS)
            )

        while not all_in():
            assert time.monotonic() < deadline, [len(a.received) for a in apps]
            await asyncio.sleep(0.05)
        everyone_received.set()
        connections = await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE)
    finally:
        everyone_received.set()
        for task in tasks:
            task.cancel()
        box[0].stop()

    assert KILL_AFTER <= confirmed_before_kill < CLIENTS * PER_CLIENT
    assert all(n >= 2 for n in connections), "every client lived through the restart"
    for i, sender in enumerate(apps):
        receiver = apps[(i + 1) % CLIENTS]
        got = {msg: body for (frm, msg), body in receiver.received.items()
               if frm == sender.identity.handle}
        # Every confirmed envelope arrived, with its exact bytes ...
        assert sender.confirmed == set(sender.sent) and len(sender.sent) == PER_CLIENT
        assert set(got) == sender.confirmed
        assert all(got[msg] == sender.sent[msg] for msg in got)
        # ... and nothing arrived that nobody sent.
        assert all(frm in handles for frm, _ in receiver.received)
        assert len(receiver.received) == PER_CLIENT
