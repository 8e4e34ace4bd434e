"""A change whose author had no right to it, in the roster its own ancestors fold to, never
enters the log (every member decides the same: it depends on the change and its ancestors
only); a change made invalid only by a concurrent one still enters, and the fold decides;
a log stored before this check restores as it was."""

from __future__ import annotations

import pytest

from client.group.roster import Change, ChangeRefused, GroupLog, Op, Status
from tests.protocol.helpers import identity

GROUP = bytes(range(16))


def _id(handle: str) -> bytes:
    return identity(handle).public.encode()


def _log(*members: str) -> GroupLog:
    return GroupLog(Change.make(identity("alice"), group_id=GROUP, op=Op.CREATE,
                                author="alice", parents=(), name="g",
                                members=[(h, _id(h)) for h in ("alice", *members)]))


def _change(log: GroupLog, author: str, op: Op, **fields) -> Change:  # type: ignore[no-untyped-def]
    return Change.make(identity(author), group_id=GROUP, op=op, author=author,
                       parents=log.heads(), **fields)


def test_a_removed_member_and_a_non_admin_are_refused_at_the_door() -> None:
    log = _log("bob", "carol")
    log.receive(_change(log, "alice", Op.REMOVE, targets=["carol"]))
    for author, op, fields, reason in (
            ("carol", Op.ADD, {"members": [("eve", _id("eve"))]}, "carol was not a member"),
            ("carol", Op.LEAVE, {}, "carol was not a member"),
            ("bob", Op.RENAME, {"name": "mine"}, "bob is not an admin"),
            ("bob", Op.PROMOTE, {"targets": ["bob"]}, "bob is not an admin")):
        with pytest.raises(ChangeRefused, match=reason):
            log.receive(_change(log, author, op, **fields))
    assert log.counts["unauthorised"] == 4 and len(log.changes) == 2
    assert log.receive(_change(log, "bob", Op.LEAVE)) is Status.APPLIED  # a member may leave


def test_a_change_made_invalid_by_a_concurrent_one_still_enters_and_the_fold_decides() -> None:
    log = _log("bob", "carol")
    log.receive(_change(log, "alice", Op.PROMOTE, targets=["bob"]))
    heads = log.heads()
    demote = Change.make(identity("alice"), group_id=GROUP, op=Op.DEMOTE, author="alice",
                         parents=heads, targets=["bob"])
    by_bob = Change.make(identity("bob"), group_id=GROUP, op=Op.RENAME, author="bob",
                         parents=heads, name="bob's")  # bob was an admin when he made it
    first, second = GroupLog.restore(log.export()), GroupLog.restore(log.export())
    for member, order in ((first, (demote, by_bob)), (second, (by_bob, demote))):
        for change in order:
            assert member.receive(change) is Status.APPLIED
    assert first.roster.name == second.roster.name
    assert first.roster.admins == second.roster.admins == {"alice"}
    assert first.counts["unauthorised"] == second.counts["unauthorised"] == 0


def test_a_log_stored_before_the_check_restores_with_what_it_held() -> None:
    log = _log("bob")
    log._check_rights = False  # as a version without the check admitted it
    junk = _change(log, "bob", Op.RENAME, name="junk")
    assert log.receive(junk) is Status.APPLIED and "is not an admin" in log.roster.refused[
        junk.id]
    restored = GroupLog.restore(log.export())
    assert junk.id in restored.changes and restored.roster.name == "g"
    with pytest.raises(ChangeRefused, match="bob is not an admin"):  # new ones: refused
        restored.receive(_change(restored, "bob", Op.RENAME, name="more junk"))
