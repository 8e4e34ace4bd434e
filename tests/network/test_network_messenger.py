"""Messenger users on a network (issue 16): every pair gets QKD keys whether the two SAEs sit
on one node, on neighbours or two hops apart, and every message says QKD+ML-KEM-768+X25519."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.stack import Stack

from .conftest import start_network, stop_network

pytestmark = pytest.mark.slow

# alice and carol share node x; dave is at x's neighbour m; bob is two hops away, at y.
USERS = {"alice": "x", "carol": "x", "dave": "m", "bob": "y"}
NODES = {"x": ["sae-alice", "sae-carol"], "m": ["sae-dave"], "y": ["sae-bob"]}


def _full_qkd(label: str) -> bool:
    parts = label.split("+")
    return parts[0] == "QKD" and "ML-KEM-768" in parts and "X25519" in parts


def test_every_pair_chats_with_qkd_keys_over_the_network(tmp_path: Path) -> None:
    network = start_network(tmp_path / "net", "--frame-bits", "65536", "--keys-ready", "100",
                            nodes=NODES)
    stack = Stack(tmp_path)
    try:
        for name in NODES:
            network.processes[name].wait_for(r"^keys ready", timeout_s=300)
        stack.start_relay()
        for user, node in USERS.items():
            stack.cli(user, "init", "--handle", user, "--sae-id", f"sae-{user}",
                      "--kme", network.url(node), "--kme-pki", str(network.pki.root),
                      check=True)
            stack.cli(user, "recv", check=True)  # its prekeys on the relay
        pairs = [("alice", "bob"), ("alice", "carol"), ("alice", "dave"), ("carol", "bob"),
                 ("dave", "bob")]
        for sender, receiver in pairs:
            stack.cli(sender, "contacts", "add", receiver, check=True)
            stack.cli(sender, "send", receiver, "-", check=True,
                      stdin="\n".join(f"{sender}->{receiver} {i}" for i in range(5)))
        for user in USERS:
            stack.cli(user, "recv", check=True)
        for sender, receiver in pairs:  # and back, on the sessions the first messages made
            stack.cli(receiver, "send", sender, f"{receiver}->{sender} back", check=True)
        for user in USERS:
            stack.cli(user, "recv", check=True)
        for sender, receiver in pairs:
            view = stack.history(receiver, sender)
            texts = [m["text"] for m in view]
            assert texts[:5] == [f"{sender}->{receiver} {i}" for i in range(5)], texts
            assert f"{receiver}->{sender} back" in texts
            assert all(_full_qkd(m["keys"]) for m in view), [m["keys"] for m in view]
            back = stack.history(sender, receiver)
            assert all(_full_qkd(m["keys"]) for m in back), [m["keys"] for m in back]
        # bob's keys with alice and carol went through the trusted node m, both ways.
        assert network.stats("m")["relay"]["forwarded"] > 0
        assert network.stats("x")["relay"]["relayed"] > 0
        assert network.stats("y")["relay"]["relayed"] > 0
    finally:
        stack.stop()
        stop_network(network)
