"""How a member sends its group receipts: one payload per sender and state with every id owed
(a read receipt covering delivery), nothing to members who left, what could not go kept for
the next flush, and what arrives during a flush sent together by the next one.

The messenger's group part (client.messenger.groups.Groups) runs on a real store; the pairwise
session it sends through is a recorder here (what it seals is the pairwise sessions' business,
tested apart): these tests count payloads, which is what batching is about.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client.group.roster import Change, GroupLog, Op
from client.group.session import GroupSession
from client.messenger import payload
from client.messenger.api import ConversationId, MessengerError
from client.messenger.groups import Groups, _Group
from client.store import Store
from tests.fixtures import make_store_fixtures as fx
from tests.protocol.helpers import identity

GROUP = bytes(range(16))


class Recorder:
    """The pairwise side (groups.Pairwise): records each payload; ``gate`` holds sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, payload.GroupReceipt]] = []
        self.failing: set[str] = set()
        self.gate: asyncio.Event | None = None
        self.waiting = asyncio.Event()

    async def ensure_session(self, conversation: ConversationId) -> str:
        return "sae"

    async def send_pairwise(self, conversation: ConversationId, body: Any, *,
                            wait: bool) -> None:
        if self.gate is not None:
            self.waiting.set()
            await self.gate.wait()
        if conversation.peer in self.failing:
            raise MessengerError(f"no QKD keys for {conversation.peer} now")
        assert isinstance(body, payload.GroupReceipt)
        self.sent.append((conversation.peer, body))

    def pairwise_held_from(self, peer: str) -> bool:
        return False


class Offline:
    ready = False

    async def send_group(self, to: tuple[str, ...], body: bytes, msg_id: str) -> None: ...
    async def ack(self, seqs: list[int]) -> None: ...


def _groups(store: Store, pairwise: Recorder) -> tuple[Groups, _Group]:
    create = Change.make(identity("alice"), group_id=GROUP, op=Op.CREATE, author="alice",
                         parents=(), name="crew",
                         members=[(h, identity(h).public.encode())
                                  for h in ("alice", "bob", "carol")])
    groups = Groups(store, identity("carol"), "carol", pairwise, Offline(),
                    lambda event: None, lambda coro, name: asyncio.create_task(coro, name=name))
    group = _Group(GROUP, GroupSession("carol", GroupLog(create)))
    groups._all()[GROUP] = group
    return groups, group


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open("pw", tmp_path / "store.sqlite3", **fx.FAST_KDF) as opened:
        yield opened


async def test_one_payload_per_sender_and_state_read_covering_delivery(store: Store) -> None:
    pairwise = Recorder()
    groups, group = _groups(store, pairwise)
    alice_ids = [f"a{i:031d}" for i in range(600)]
    for text_id in alice_ids:
        groups._owe(group, "alice", "delivered", text_id)
    for text_id in alice_ids[:550]:
        groups._owe(group, "alice", "read", text_id)
    for text_id in ("b1", "b2", "b3"):
        groups._owe(group, "bob", "delivered", text_id)
    groups._owe(group, "mallory", "read", "m1")  # no member: nobody to tell
    groups._flush_soon()
    await groups.settle()
    sent = [(peer, body.state, len(body.ids)) for peer, body in pairwise.sent]
    assert sorted(sent) == [("alice", "delivered", 50), ("alice", "read", 38),
                            ("alice", "read", 512), ("bob", "delivered", 3)]
    assert {i for _, body in pairwise.sent if body.state == "delivered" for i in body.ids
            if i.startswith("a")} == set(alice_ids[550:])
    assert group.owed == []
    loaded = store.load_group(GROUP)
    assert loaded is not None and loaded[1]["owed"] == []  # the store says so too


async def test_what_cannot_go_is_kept_and_what_comes_meanwhile_goes_next(store: Store) -> None:
    pairwise = Recorder()
    pairwise.failing = {"bob"}
    groups, group = _groups(store, pairwise)
    groups._owe(group, "bob", "read", "b1")
    groups._owe(group, "alice", "delivered", "a1")
    pairwise.gate = asyncio.Event()
    groups._flush_soon()
    await pairwise.waiting.wait()  # the first flush is sending: more arrives meanwhile
    for text_id in ("a2", "a3", "a4"):
        groups._owe(group, "alice", "delivered", text_id)
        groups._flush_soon()  # one flush at a time: these wait for the next pass
    pairwise.gate.set()
    await groups.settle()
    assert [(p, b.ids) for p, b in pairwise.sent] == [("alice", ("a1",)),
                                                      ("alice", ("a2", "a3", "a4"))]
    assert group.owed == [("bob", "read", "b1")]  # kept for the next flush (and restart)
    loaded = store.load_group(GROUP)
    assert loaded is not None and loaded[1]["owed"] == [["bob", "read", "b1"]]
    pairwise.failing = set()
    groups._flush_soon()
    await groups.settle()
    assert pairwise.sent[-1][0] == "bob" and group.owed == []
