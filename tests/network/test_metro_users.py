"""Four users on the metro network exchange 100 messages each (issue 16's tests), and every
one is mixed with QKD keys: alice and dave at hf-5, carol at hf-6 (three hops away), bob at
hf-7 (four hops). Real node processes, relay and CLI clients; the links run with
``--link none`` and the test fills their pools as their QKD links would, so what is tested is
the relay of keys for 400 messages and not the emulated photons' speed."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from keysource.network.topology import builtin
from tests.conftest import active_full_sources
from tests.e2e.stack import Stack

from .conftest import start_builtin, stop_network

pytestmark = pytest.mark.slow

USERS = ("alice", "bob", "carol", "dave")
PER_USER = 100
FULL = active_full_sources()  # QKD+ML-KEM-768+X25519, with liboqs its conservative KEM too


def _shares(user: str) -> dict[str, int]:
    """How many of ``user``'s PER_USER messages go to each of the three others."""
    peers = [u for u in USERS if u != user]
    return {peer: PER_USER // 3 + (i < PER_USER % 3) for i, peer in enumerate(peers)}


def test_four_users_exchange_100_messages_each_all_with_qkd_keys(tmp_path: Path) -> None:
    metro = builtin("metro")
    network = start_builtin(tmp_path / "net", "metro", "--link", "none")
    stack = Stack(tmp_path)
    try:
        for link in metro.links:
            network.fill(link.a, link.b, 3000)
        stack.start_relay()
        for user in USERS:
            node = metro.node_of_sae(f"sae-{user}")
            assert node is not None
            stack.cli(user, "init", "--handle", user, "--sae-id", f"sae-{user}",
                      "--kme", network.url(node), "--kme-pki", str(network.pki.root),
                      "--qkd-policy", "require", check=True)
            stack.cli(user, "recv", check=True)  # its prekeys on the relay
        pairs = list(itertools.combinations(USERS, 2))
        sent: dict[tuple[str, str], list[str]] = {}
        for first, second in pairs:  # the first of each pair opens the session
            stack.cli(first, "contacts", "add", second, check=True)
        for turn in ((a, b) for a, b in pairs), ((b, a) for a, b in pairs):
            for sender, receiver in turn:  # one batch per sender and receiver
                texts = [f"{sender}->{receiver} {i}"
                         for i in range(_shares(sender)[receiver])]
                stack.cli(sender, "send", receiver, "-", stdin="\n".join(texts), check=True)
                sent[(sender, receiver)] = texts
            for user in USERS:
                stack.cli(user, "recv", check=True)
        assert sum(len(t) for t in sent.values()) == PER_USER * len(USERS)
        for receiver, sender in itertools.permutations(USERS, 2):
            view = stack.history(receiver, sender)
            texts = [m["text"] for m in view]
            assert [t for t in texts if t.startswith(f"{sender}->")] == sent[(sender, receiver)]
            assert len(view) == len(sent[(sender, receiver)]) + len(sent[(receiver, sender)])
            assert {m["keys"] for m in view} <= FULL, {m["keys"] for m in view}
        # alice's and bob's keys crossed the ring; alice's and dave's stayed at hf-5.
        assert network.stats("hf-1")["relay"]["forwarded"] > 0
        assert network.stats("hf-5")["relay"]["local"] > 0
    finally:
        stack.stop()
        stop_network(network)
