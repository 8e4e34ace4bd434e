"""The messenger reports the path its keys took over a real network (issue 16, item 4).

Real node processes x - m - y (link pools filled by hand, so the test does not wait for
QKD), a real relay, bob driven through the ``qsecret`` CLI at y, alice's messenger
in-process at x: the key panel's figures name the trusted node m, in the direction the
keys went (alice's enc_keys at x, and bob's keys that alice fetched with dec_keys).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from client.config import load_config
from client.messenger.api import Event, KeyPath, MessageEvent
from client.messenger.profile import open_profile
from tests.conftest import active_full_sources
from tests.e2e.stack import PASSPHRASE, Stack

from .conftest import start_network, stop_network

pytestmark = pytest.mark.slow

NODES = {"x": ["sae-alice"], "m": ["sae-m"], "y": ["sae-bob"]}


async def test_the_messenger_reports_the_two_hop_path_of_its_keys(tmp_path: Path) -> None:
    network = start_network(tmp_path / "net", "--link", "none", nodes=NODES)
    stack = Stack(tmp_path)
    try:
        network.fill("x", "m", 600)
        network.fill("m", "y", 600)
        stack.start_relay()
        for user, node in (("alice", "x"), ("bob", "y")):
            stack.cli(user, "init", "--handle", user, "--sae-id", f"sae-{user}",
                      "--kme", network.url(node), "--kme-pki", str(network.pki.root),
                      check=True)
        stack.cli("bob", "recv", check=True)  # his prekeys on the relay
        alice = open_profile(load_config(stack.profile("alice"), relay_url=stack.relay_url),
                             PASSPHRASE)
        arrived = asyncio.Event()

        def on_event(event: Event) -> None:
            if isinstance(event, MessageEvent) and event.message.text == "back from bob":
                arrived.set()

        alice.subscribe(on_event)
        await alice.start()
        try:
            await alice.wait_online(15)
            status = alice.key_status("bob")
            assert status.key_path is None and status.key_path_back is None  # no keys yet
            await alice.add_contact("bob")  # the session's first keys: enc_keys at x
            assert alice.key_status("bob").key_path == KeyPath("alice", "bob", ("x", "m", "y"))
            sent = await alice.send("bob", "hello over two hops")
            assert sent.sources in active_full_sources(), sent.sources
            path = alice.key_status("bob").key_path
            assert path == KeyPath("alice", "bob", ("x", "m", "y"))
            assert path.describe() == "alice@x → m → bob@y  (2 hops; trusted: m)"
            await asyncio.to_thread(stack.cli, "bob", "recv", check=True)
            await asyncio.to_thread(stack.cli, "bob", "send", "alice", "back from bob",
                                    check=True)
            await asyncio.wait_for(arrived.wait(), 30)
            # bob's keys, fetched by alice at x: they went y -> m -> x
            status = alice.key_status("bob")
            assert status.key_path_back == KeyPath("bob", "alice", ("y", "m", "x"))
            assert status.key_path == KeyPath("alice", "bob", ("x", "m", "y"))
        finally:
            await alice.stop()
        history = stack.history("bob", "alice")
        assert [m["text"] for m in history] == ["hello over two hops", "back from bob"]
        assert all(m["keys"] in active_full_sources() for m in history), history
        assert network.stats("m")["relay"]["forwarded"] >= 2
    finally:
        stack.stop()
        stop_network(network)
