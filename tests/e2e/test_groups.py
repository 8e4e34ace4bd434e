"""Group chats with real processes: relay, KME pair and ``qsecret`` commands on loopback.

Five members exchange 200 messages while one is offline for the first half, then catches up;
a removed member, with their own store opened, decrypts nothing sent after the removal and is
told they were removed; two admins who change the membership at once (while the relay is
down, so neither can have seen the other's change) reach the same roster on every member.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from client.group.roster import GroupLog
from client.group.session import GroupSession
from client.messenger import payload
from client.messenger.groups import GROUP_ENVELOPE
from client.protocol import ProtocolError
from client.store.store import Store
from relay import wire
from tests.conftest import active_full_sources
from tests.e2e.stack import PASSPHRASE, Stack
from tests.network.conftest import logged_in_on_two_nodes
from tests.relay.harness import Client

pytestmark = pytest.mark.slow

MEMBERS = ("alice", "bob", "carol", "dave", "erin")
# Two QKD nodes joined by a link: every pair of members gets QKD keys, on one node or across.
AT = {"alice": "x", "carol": "x", "erin": "x", "bob": "y", "dave": "y"}
NODES = {"x": ["sae-alice", "sae-carol", "sae-erin"], "y": ["sae-bob", "sae-dave"]}


@pytest.fixture(scope="module")
def crew(tmp_path_factory: pytest.TempPathFactory, pq_backend: str) -> Iterator[Stack]:
    """A relay, the two nodes and five profiles, each logged in once (prekeys published)."""
    with logged_in_on_two_nodes(tmp_path_factory.mktemp("groups"), AT, NODES) as stack:
        yield stack


def _each(stack: Stack, commands: dict[str, tuple[str, ...]],
          stdin: dict[str, str] | None = None) -> dict[str, str]:
    """One command per member, run at once (separate processes, as separate users would);
    the standard output of each."""
    with ThreadPoolExecutor(len(commands)) as pool:
        futures = {handle: pool.submit(stack.cli, handle, *args, check=True,
                                       stdin=(stdin or {}).get(handle))
                   for handle, args in commands.items()}
        return {handle: future.result().stdout for handle, future in futures.items()}


def _recv_each(stack: Stack, handles: list[str] | tuple[str, ...]) -> dict[str, list[dict]]:
    out = _each(stack, {handle: ("recv", "--json") for handle in handles})
    return {handle: [json.loads(line) for line in text.splitlines() if line.strip()]
            for handle, text in out.items()}


def _send_each(stack: Stack, group: str, lines: dict[str, list[str]]) -> None:
    _each(stack, {handle: ("send", f"@{group}", "-") for handle in lines},
          {handle: "\n".join(texts) + "\n" for handle, texts in lines.items()})


def _recv(stack: Stack, handle: str) -> list[dict[str, object]]:
    result = stack.cli(handle, "recv", "--json", check=True)
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def _groups(stack: Stack, handle: str) -> dict[str, dict[str, object]]:
    result = stack.cli(handle, "group", "list", "--json", "--changes", check=True)
    return {g["name"]: g for g in json.loads(result.stdout)}


def _send(stack: Stack, handle: str, group: str, lines: list[str]) -> None:
    stack.cli(handle, "send", f"@{group}", "-", stdin="\n".join(lines) + "\n", check=True)


def test_five_members_200_messages_one_offline_for_half(crew: Stack) -> None:
    crew.cli("alice", "group", "create", "five", "bob", "carol", "dave", "erin", check=True)
    received: dict[str, list[dict[str, object]]] = {h: [] for h in MEMBERS}
    online = [h for h in MEMBERS if h != "dave"]
    for handle, got in _recv_each(crew, online).items():
        received[handle] += got
    # First half: dave is offline; the four others send 25 each at once.
    sent = {h: [f"{h} #{i}" for i in range(25)] if h != "dave" else [] for h in MEMBERS}
    _send_each(crew, "five", {h: sent[h] for h in online})
    for handle, got in _recv_each(crew, online).items():
        received[handle] += got
    # dave comes back: everything sent meanwhile; then the second half from all five.
    received["dave"] += _recv(crew, "dave")
    second = {h: [f"{h} #{i}" for i in range(len(sent[h]), len(sent[h]) + 20)] for h in MEMBERS}
    _send_each(crew, "five", second)
    for handle in MEMBERS:
        sent[handle] += second[handle]
    for handle, got in _recv_each(crew, MEMBERS).items():
        received[handle] += got
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


def _relay_bodies(stack: Stack, recipient: str) -> list[bytes]:
    """The group envelopes the relay holds for ``recipient`` (what it sees: sealed bytes)."""
    db = sqlite3.connect(f"file:{stack.root / 'relay' / 'relay.sqlite3'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT body FROM envelopes WHERE recipient = ? AND body IS NOT NULL "
                          "ORDER BY seq", (recipient,)).fetchall()
    finally:
        db.close()
    return [bytes(body) for (body,) in rows if body[0] == GROUP_ENVELOPE]


def test_a_removed_member_reads_nothing_sent_after_the_removal(crew: Stack) -> None:
    crew.cli("alice", "group", "create", "trio", "bob", "carol", check=True)
    _recv_each(crew, ("bob", "carol"))
    _send_each(crew, "trio", {h: [f"{h} before"] for h in ("alice", "bob", "carol")})
    carol_read = _recv_each(crew, ("alice", "bob", "carol"))["carol"]
    crew.cli("alice", "group", "remove", "trio", "carol", check=True)
    # carol is told, and can no longer send to the group.
    told = _recv(crew, "carol")
    carol_read += told
    assert any(m.get("event") == "group" and m["note"] == "alice removed you"
               and m["status"] == "removed" for m in told), told
    refused = crew.cli("carol", "send", "@trio", "still here?")
    assert refused.returncode == 1 and "not a member" in refused.stderr
    view = _groups(crew, "carol")["trio"]
    assert (view["status"], view["removed_by"]) == ("removed", "alice")
    # After the removal alice and bob write while the other is away: the relay holds it.
    waiting = set(_relay_bodies(crew, "bob"))
    _send(crew, "alice", "trio", ["alice after 1", "alice after 2"])
    after = [b for b in _relay_bodies(crew, "bob") if b not in waiting]  # before bob takes them
    _send(crew, "bob", "trio", ["bob after"])  # bob took in the removal first: a new key
    after += _relay_bodies(crew, "alice")
    assert len(after) == 3
    # carol, with her own store open, decrypts none of it.
    store = Store.open(PASSPHRASE, crew.profile("carol") / "store.sqlite3", create=False)
    try:
        (group_id,) = [g for g in store.group_ids() if _named(store, g) == "trio"]
        loaded = store.load_group(group_id)
        assert loaded is not None and loaded[0] is not None
        session = GroupSession.restore("carol", GroupLog.restore(loaded[0]["changes"]),
                                       loaded[1]["session"])
        for body in after:
            with pytest.raises(ProtocolError):
                session.decrypt(body[1:])
    finally:
        store.close()
    got = _recv_each(crew, ("alice", "bob", "carol"))
    after_texts = {h: [m["text"] for m in got[h] if "after" in str(m.get("text"))]
                   for h in got}
    assert after_texts == {"alice": ["bob after"], "bob": ["alice after 1", "alice after 2"],
                           "carol": []}
    # What was sent before the removal reached her (some of it, maybe, only after it).
    carol_read += got["carol"]
    assert {"alice before", "bob before"} <= {m.get("text") for m in carol_read}
    assert _groups(crew, "bob")["trio"]["members"] == ["alice", "bob"]


def _named(store: Store, group_id: bytes) -> str:
    loaded = store.load_group(group_id)
    if loaded is None or loaded[0] is None:
        return ""
    return GroupLog.restore(loaded[0]["changes"]).roster.name


def test_concurrent_add_and_remove_by_two_admins_converge(crew: Stack) -> None:
    crew.cli("alice", "group", "create", "both", "bob", "carol", "dave", check=True)
    crew.cli("alice", "group", "promote", "both", "bob", check=True)
    crew.cli("alice", "contacts", "add", "erin", check=True)
    _recv_each(crew, ("bob", "carol", "dave", "erin"))
    # With the relay down neither admin can see the other's change: alice adds erin while
    # bob removes dave, each on the roster they have.
    assert crew.relay is not None
    crew.relay.stop()
    try:
        for handle, args in (("alice", ("add", "both", "erin")),
                             ("bob", ("remove", "both", "dave"))):
            result = crew.cli(handle, "group", *args, "--timeout", "2")
            assert result.returncode == 0, result.stderr
            assert "offline" in result.stderr
    finally:
        crew.start_relay()
    for _ in range(2):  # the changes, then what members forward to those who lacked them
        _recv_each(crew, MEMBERS)
    views = {h: _groups(crew, h)["both"] for h in MEMBERS}
    for handle in ("alice", "bob", "carol", "erin"):
        assert views[handle]["members"] == ["alice", "bob", "carol", "erin"], (handle, views)
        assert views[handle]["admins"] == ["alice", "bob"]
        assert views[handle]["status"] == "member"
        assert [c["id"] for c in views[handle]["changes"]] == \
            [c["id"] for c in views["alice"]["changes"]]
    assert (views["dave"]["status"], views["dave"]["removed_by"]) == ("removed", "bob")
    # And the group works for the roster it converged to.
    _send(crew, "erin", "both", ["erin here"])
    got = _recv_each(crew, ("alice", "bob", "carol", "dave"))
    for handle in ("alice", "bob", "carol"):
        assert [m["text"] for m in got[handle] if "text" in m] == ["erin here"], handle
    assert not [m for m in got["dave"] if "text" in m]


class _Login:
    """A relay login with a profile's own identity (what a hostile member's client could do)."""

    def __init__(self, stack: Stack, handle: str) -> None:
        with Store.open(PASSPHRASE, stack.profile(handle) / "store.sqlite3",
                        create=False) as store:
            loaded = store.load_identity()
        assert loaded is not None
        self.handle, identity = loaded
        self.keypair = SimpleNamespace(public_key=identity.public.signing_key)
        self.sign = identity.sign


def _group_state(stack: Stack, handle: str, name: str) -> tuple[bytes, GroupSession]:
    with Store.open(PASSPHRASE, stack.profile(handle) / "store.sqlite3",
                    create=False) as store:
        (group_id,) = [g for g in store.group_ids() if _named(store, g) == name]
        loaded = store.load_group(group_id)
    assert loaded is not None and loaded[0] is not None
    log = GroupLog.restore(loaded[0]["changes"])
    return group_id, GroupSession.restore(handle, log, loaded[1]["session"])


async def _inject(stack: Stack, handle: str, to: list[str], body: bytes) -> None:
    client = await Client(stack.relay_url, _Login(stack, handle)).connect()  # type: ignore[arg-type]
    try:
        client.conn.send_group(to, body)
        await client.flush()
        await client.wait(lambda: any(isinstance(e, wire.StoredGroup) for e in client.events))
    finally:
        await client.close()


def test_messages_from_a_removed_member_or_under_a_retired_key_are_refused_and_counted(
        crew: Stack) -> None:
    crew.cli("alice", "group", "create", "watch", "bob", "carol", check=True)
    _recv_each(crew, ("bob", "carol"))
    _send_each(crew, "watch", {"alice": ["a1"], "carol": ["c1"]})
    _recv_each(crew, ("alice", "bob", "carol"))
    _, alice_before = _group_state(crew, "alice", "watch")  # her key before the removal
    crew.cli("alice", "group", "remove", "watch", "carol", check=True)
    _send(crew, "alice", "watch", ["a2"])  # under her new key (the removal made one)
    assert [m["text"] for m in _recv(crew, "bob") if "text" in m] == ["a2"]
    # carol, removed, writes with the key she still has; and alice's old key, which bob now
    # knows was replaced after a1, seals one more (a copy of her state from before).
    _, carol = _group_state(crew, "carol", "watch")
    asyncio.run(_inject(crew, "carol", ["bob"], bytes([GROUP_ENVELOPE])
                        + carol.seal(payload.text("c2 after removal").encode())))
    asyncio.run(_inject(crew, "alice", ["bob"], bytes([GROUP_ENVELOPE])
                        + alice_before.seal(payload.text("a-stale").encode())))
    assert [m for m in _recv(crew, "bob") if "text" in m] == []
    refused = _groups(crew, "bob")["watch"]["refused"]
    assert refused.get("not_member") == 1 and refused.get("retired") == 1, refused
