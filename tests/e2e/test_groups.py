"""Group chats with real processes: relay, KME pair and ``qsecret`` commands on loopback.

Five members exchange 200 messages while one is offline for the first half, then catches up;
a removed member, with their own store opened, decrypts nothing sent after the removal and is
told they were removed; two admins who change the membership at once (while the relay is
down, so neither can have seen the other's change) reach the same roster on every member.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.group.roster import GroupLog
from client.group.session import GroupSession
from client.messenger.groups import GROUP_ENVELOPE
from client.protocol import ProtocolError
from client.store.store import Store
from tests.conftest import active_full_sources
from tests.e2e.stack import PASSPHRASE, Stack
from tests.network.conftest import start_network, stop_network

MEMBERS = ("alice", "bob", "carol", "dave", "erin")
# Two QKD nodes joined by a link: every pair of members gets QKD keys, on one node or across.
AT = {"alice": "x", "carol": "x", "erin": "x", "bob": "y", "dave": "y"}
NODES = {"x": ["sae-alice", "sae-carol", "sae-erin"], "y": ["sae-bob", "sae-dave"]}


@pytest.fixture(scope="module")
def crew(tmp_path_factory: pytest.TempPathFactory, pq_backend: str) -> Iterator[Stack]:
    """A relay, the two nodes and five profiles, each logged in once (prekeys published)."""
    root = tmp_path_factory.mktemp("groups")
    network = start_network(root / "net", "--frame-bits", "65536", "--keys-ready", "200",
                            nodes=NODES, links=[("x", "y")])
    stack = Stack(root)
    try:
        for name in NODES:
            network.processes[name].wait_for(r"^keys ready", timeout_s=300)
        stack.start_relay()
        for handle, node in AT.items():
            stack.cli(handle, "init", "--handle", handle, "--sae-id", f"sae-{handle}",
                      "--kme", network.url(node), "--kme-pki", str(network.pki.root),
                      check=True)
            stack.cli(handle, "recv", check=True)
        yield stack
    finally:
        stack.stop()
        stop_network(network)


def _recv(stack: Stack, handle: str) -> list[dict[str, object]]:
    result = stack.cli(handle, "recv", "--json", check=True)
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def _groups(stack: Stack, handle: str) -> dict[str, dict[str, object]]:
    result = stack.cli(handle, "group", "list", "--json", check=True)
    return {g["name"]: g for g in json.loads(result.stdout)}


def _send(stack: Stack, handle: str, group: str, lines: list[str]) -> None:
    stack.cli(handle, "send", f"@{group}", "-", stdin="\n".join(lines) + "\n", check=True)


def test_five_members_200_messages_one_offline_for_half(crew: Stack) -> None:
    crew.cli("alice", "group", "create", "five", "bob", "carol", "dave", "erin", check=True)
    received: dict[str, list[dict[str, object]]] = {h: [] for h in MEMBERS}
    online = [h for h in MEMBERS if h != "dave"]
    for handle in online:
        received[handle] += _recv(crew, handle)
    # First half: dave is offline; the four others send 25 each, reading as they go.
    sent: dict[str, list[str]] = {h: [] for h in MEMBERS}
    for handle in online:
        lines = [f"{handle} #{i}" for i in range(25)]
        _send(crew, handle, "five", lines)
        sent[handle] += lines
    for handle in online:
        received[handle] += _recv(crew, handle)
    # dave comes back: everything sent meanwhile, then the second half from all five.
    received["dave"] += _recv(crew, "dave")
    for handle in MEMBERS:
        lines = [f"{handle} #{i}" for i in range(len(sent[handle]), len(sent[handle]) + 20)]
        _send(crew, handle, "five", lines)
        sent[handle] += lines
    for handle in MEMBERS:
        received[handle] += _recv(crew, handle)
    assert sum(map(len, sent.values())) == 200
    full = active_full_sources()
    for handle in MEMBERS:
        messages = [m for m in received[handle] if m.get("group") == "five" and "text" in m]
        for sender in MEMBERS:
            if sender == handle:
                continue
            texts = [m["text"] for m in messages if m["from"] == sender]
            assert texts == sent[sender], f"{handle} got from {sender}: {texts}"
        assert all(str(m["keys"]).startswith("sender key via ") for m in messages)
    # bob (KME B) got alice's sender key (KME A) on QKD-mixed keys.
    from_alice = [m for m in received["bob"] if m.get("from") == "alice" and "text" in m]
    assert {str(m["keys"]).removeprefix("sender key via ") for m in from_alice} <= full
    view = _groups(crew, "dave")["five"]
    assert view["members"] == list(MEMBERS) and view["status"] == "member"
