"""The relay runs on any Store: only the interface's methods, no concrete class checks.

``ContractOnly`` forwards the abstract methods of relay.store.Store to a store (SQLite or
Redis)
and nothing else (no grouped-commit fast paths), so the relay must run on the
interface's defaults; and routing goes through a Router the test supplies.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from relay import wire
from relay.config import RelayConfig
from relay.routing import LocalRouter
from relay.server import Relay
from relay.store import Store
from tests.relay.harness import Client, Identity
from tests.relay.stores import StoreFactory


def _forwarding_store(inner: Store) -> Store:
    abstract = sorted(Store.__abstractmethods__)

    def forward(name: str) -> Any:
        if inspect.iscoroutinefunction(getattr(Store, name)):
            async def method(self: Store, *args: Any) -> Any:
                return await getattr(inner, name)(*args)
        else:
            def method(self: Store, *args: Any) -> Any:  # type: ignore[misc]
                return getattr(inner, name)(*args)
        return method

    cls = type("ContractOnly", (Store,), {name: forward(name) for name in abstract})
    store = cls()
    store.limits = inner.limits
    return store


class CountingRouter(LocalRouter):  # type: ignore[type-arg]
    def __init__(self) -> None:
        super().__init__()
        self.joins = 0
        self.wakes: list[str] = []

    def join(self, handle: str, session: Any) -> None:
        self.joins += 1
        super().join(handle, session)

    def wake(self, handle: str) -> None:
        self.wakes.append(handle)


def test_the_relay_source_names_no_concrete_store() -> None:
    root = Path(__file__).resolve().parents[2] / "relay"
    for path in root.glob("*.py"):
        text = path.read_text()
        assert "isinstance(store, SqliteStore)" not in text, path
        assert "isinstance(self.store" not in text, path


async def test_envelopes_prekeys_and_file_streams_over_the_interface_only(
        tmp_path: Path, stores: StoreFactory) -> None:
    inner = stores.make()
    router = CountingRouter()
    relay = Relay(RelayConfig(tmp_path / "relay", port=0), store=_forwarding_store(inner),
                  router=router)
    await relay.start()
    try:
        url = f"ws://127.0.0.1:{relay.port}/"
        alice_id, bob_id = Identity("alice"), Identity("bob")
        bob = await Client(url, bob_id).connect()
        await bob.close()  # bob is known, now offline
        alice = await Client(url, alice_id).connect()
        msg = await alice.send("bob", b"while you were away")
        await alice.wait(lambda: msg in alice.stored)
        assert router.wakes == ["bob"]

        stream = os.urandom(16)
        alice.stream_open(stream, "bob", "file", req_id="f1")
        alice.send_chunk(stream, "file", 0, b"spooled chunk")
        alice.conn.ping(req_id="p1")  # answered once the chunk is durable
        await alice.flush()
        await alice.wait(lambda: any(isinstance(e, wire.Pong) for e in alice.events))

        bundle = wire.sign_bundle("alice", alice_id.keypair.public_key, b"signed", [(1, b"k")],
                                  alice_id.sign)
        alice.conn.upload_prekeys(bundle, req_id="up")
        await alice.flush()
        await alice.wait(lambda: any(isinstance(e, wire.PrekeysOk) for e in alice.events))

        bob = await Client(url, bob_id, auto_ack=False).connect()
        await bob.wait(lambda: len(bob.delivered) == 1 and any(
            isinstance(e, wire.BinaryFrame) for e in bob.events))
        assert bob.delivered[0].body == b"while you were away"
        chunk = next(e for e in bob.events if isinstance(e, wire.BinaryFrame))
        assert bytes(chunk.payload) == b"spooled chunk"
        bob.conn.fetch_prekeys("alice", req_id="get")
        await bob.flush()
        await bob.wait(lambda: any(isinstance(e, wire.Bundle) for e in bob.events))
        assert router.joins == 3
        assert await inner.queue_depth("bob") == 1
        bob.conn.ack([bob.delivered[0].seq])
        bob.conn.ping(req_id="after-ack")  # handled after the ack, which is queued by then
        await bob.flush()
        await bob.wait(lambda: any(isinstance(e, wire.Pong) for e in bob.events))
        assert await inner.queue_depth("bob") == 0  # the ack went through the interface
        await alice.close()
        await bob.close()
    finally:
        await relay.stop()
