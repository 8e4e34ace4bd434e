"""A member's group session: keys reach the members, a removal shuts the removed out,
messages under retired keys or from non-members are refused, nothing honest is lost."""

from __future__ import annotations

import copy

import pytest

from client.group.roster import Change, GroupLog, Op
from client.group.sender_keys import ROTATE_AFTER_MESSAGES
from client.group.session import (
    GroupSession,
    NotAMember,
    Outgoing,
    RetiredSenderKey,
    UnknownSenderKey,
)
from client.protocol.errors import MalformedMessage
from tests.protocol.helpers import identity

GROUP = bytes(range(16))
MEMBERS = ("alice", "bob", "carol")


def _group() -> dict[str, GroupSession]:
    create = Change.make(identity("alice"), group_id=GROUP, op=Op.CREATE, author="alice",
                         parents=(), name="trio",
                         members=[(h, identity(h).public.encode()) for h in MEMBERS])
    return {h: GroupSession(h, GroupLog(Change.decode(create.encode()))) for h in MEMBERS}


def _deliver(sessions: dict[str, GroupSession], sender: str, out: Outgoing,
             to: tuple[str, ...] | None = None) -> dict[str, bytes]:
    got = {}
    for member in out.recipients if to is None else to:
        if member in out.distributions:
            sessions[member].receive_distribution(sender, out.distributions[member].encode())
        got[member] = sessions[member].decrypt(out.wire)[1]
    return got


def _change_everywhere(sessions: dict[str, GroupSession], author: str, op: Op,
                       **fields) -> Change:  # type: ignore[no-untyped-def]
    change = sessions[author].make_change(identity(author), op, **fields)
    for handle, session in sessions.items():
        if handle != author:
            session.receive_change(Change.decode(change.encode()))
    return change


def test_every_member_reads_every_other() -> None:
    sessions = _group()
    for sender in MEMBERS:
        out = sessions[sender].encrypt(f"hi from {sender}".encode())
        assert set(out.recipients) == set(MEMBERS) - {sender}
        assert set(_deliver(sessions, sender, out).values()) == {f"hi from {sender}".encode()}
    # The second message carries no record: everyone holds the key already.
    assert sessions["alice"].encrypt(b"again").distributions == {}


def test_a_removed_member_reads_nothing_sent_after_the_removal() -> None:
    sessions = _group()
    for sender in MEMBERS:
        _deliver(sessions, sender, sessions[sender].encrypt(b"before"))
    carol = sessions["carol"]
    _change_everywhere(sessions, "alice", Op.REMOVE, targets=["carol"])
    for sender in ("alice", "bob"):
        out = sessions[sender].encrypt(b"after the removal")
        assert out.recipients == tuple(m for m in ("alice", "bob") if m != sender)
        assert "carol" not in out.distributions
        assert _deliver(sessions, sender, out)  # the remaining member reads it
        # carol's own client (which may not even have seen the removal) cannot:
        lagging = copy.deepcopy(carol)
        with pytest.raises((UnknownSenderKey, NotAMember)):
            lagging.decrypt(out.wire)


def test_a_removed_members_messages_are_refused() -> None:
    sessions = _group()
    carol_before = copy.deepcopy(sessions["carol"])
    _deliver(sessions, "carol", sessions["carol"].encrypt(b"hello"))
    _change_everywhere(sessions, "alice", Op.REMOVE, targets=["carol"])
    with pytest.raises(NotAMember):
        sessions["carol"].encrypt(b"am I still here?")
    still = carol_before.encrypt(b"from an old copy of carol's client")
    with pytest.raises(NotAMember):
        sessions["bob"].decrypt(still.wire)
    with pytest.raises(NotAMember):
        sessions["bob"].receive_distribution("carol", still.distributions["bob"].encode())
    assert sessions["bob"].counts["not_member"] == 2


def test_retired_keys_open_what_was_sent_before_and_refuse_what_came_after() -> None:
    sessions = _group()
    alice, bob = sessions["alice"], sessions["bob"]
    _deliver(sessions, "alice", alice.encrypt(b"one"))
    late = alice.encrypt(b"sent before the removal, delivered late")
    old_key = copy.deepcopy(alice.own)
    _change_everywhere(sessions, "alice", Op.REMOVE, targets=["carol"])
    fresh = alice.encrypt(b"new key")
    assert fresh.distributions["bob"].record.generation == 2
    assert fresh.distributions["bob"].previous_end == 2
    assert _deliver(sessions, "alice", fresh, to=("bob",)) == {"bob": b"new key"}
    assert bob.decrypt(late.wire) == ("alice", b"sent before the removal, delivered late")
    assert old_key is not None
    with pytest.raises(RetiredSenderKey):  # alice's old key, used after the rotation
        bob.decrypt(old_key.encrypt(b"under the retired key"))
    assert bob.counts["retired"] == 1


def test_keys_rotate_on_schedule_and_reach_everyone() -> None:
    sessions = _group()
    alice = sessions["alice"]
    _deliver(sessions, "alice", alice.encrypt(b"first"))
    assert alice.own is not None
    alice.own.iteration = ROTATE_AFTER_MESSAGES
    out = alice.encrypt(b"rotated")
    assert {d.record.generation for d in out.distributions.values()} == {2}
    assert _deliver(sessions, "alice", out) == {"bob": b"rotated", "carol": b"rotated"}


def test_a_new_member_gets_the_current_key_and_reads_from_then_on() -> None:
    sessions = _group()
    _deliver(sessions, "alice", sessions["alice"].encrypt(b"before dave"))
    _change_everywhere(sessions, "alice", Op.ADD,
                       members=[("dave", identity("dave").public.encode())])
    log = GroupLog(Change.decode(next(iter(sessions["alice"].log.order())).encode()))
    for change in sessions["alice"].log.order()[1:]:
        log.receive(change)
    sessions["dave"] = GroupSession("dave", log)
    out = sessions["alice"].encrypt(b"welcome dave")
    assert set(out.distributions) == {"dave"}
    assert _deliver(sessions, "alice", out)["dave"] == b"welcome dave"


def test_a_record_naming_another_sender_is_refused() -> None:
    sessions = _group()
    out = sessions["alice"].encrypt(b"x")
    with pytest.raises(MalformedMessage):
        sessions["bob"].receive_distribution("carol", out.distributions["bob"].encode())
