"""Group membership: signed changes, forged and replayed ones refused, concurrent ones
converging to the same roster on every member."""

from __future__ import annotations

import itertools
import os
import random

import pytest

from client.group.roster import (
    MAX_MEMBERS,
    Change,
    ChangeRefused,
    GroupLog,
    Op,
    Status,
)
from client.protocol.errors import MalformedMessage
from tests.protocol.helpers import identity

GROUP = bytes(range(16))


def _id(handle: str) -> bytes:
    return identity(handle).public.encode()


def _create(*members: str, author: str = "alice") -> Change:
    return Change.make(identity(author), group_id=GROUP, op=Op.CREATE, author=author,
                       parents=(), members=[(h, _id(h)) for h in (author, *members)],
                       name="project")


def _change(log: GroupLog, author: str, op: Op, **fields) -> Change:  # type: ignore[no-untyped-def]
    return Change.make(identity(author), group_id=GROUP, op=op, author=author,
                       parents=log.heads(), **fields)


def _wire(change: Change) -> Change:
    return Change.decode(change.encode())


def test_create_add_remove_rename_as_every_member_sees_it() -> None:
    create = _create("bob")
    log = GroupLog(_wire(create), creator=identity("alice").public)
    assert set(log.roster.members) == {"alice", "bob"} and log.roster.admins == {"alice"}
    add = _change(log, "alice", Op.ADD, members=[("carol", _id("carol"))])
    assert log.receive(_wire(add)) is Status.APPLIED
    rename = _change(log, "alice", Op.RENAME, name="launch")
    log.receive(_wire(rename))
    remove = _change(log, "alice", Op.REMOVE, targets=["carol"])
    log.receive(_wire(remove))
    assert set(log.roster.members) == {"alice", "bob"}
    assert log.roster.name == "launch" and log.roster.removed == {"carol"}
    assert log.roster.refused == {}


def test_only_admins_change_membership_and_members_may_leave() -> None:
    log = GroupLog(_create("bob", "carol"))
    with pytest.raises(ChangeRefused, match="bob is not an admin"):  # never enters the log
        log.receive(_change(log, "bob", Op.REMOVE, targets=["carol"]))
    assert "carol" in log.roster.members and log.counts["unauthorised"] == 1
    assert len(log.changes) == 1
    log.receive(_change(log, "carol", Op.LEAVE))
    assert set(log.roster.members) == {"alice", "bob"}
    lone = _change(log, "alice", Op.LEAVE)
    log.receive(lone)
    assert "last admin" in log.roster.refused[lone.id]


def test_a_forged_change_is_refused_and_counted() -> None:
    log = GroupLog(_create("bob"))
    unsigned = Change(GROUP, Op.ADD, "alice", log.heads(), (("mallory", _id("mallory")),))
    forged = Change(*list(unsigned.__dict__.values())[:-1],
                    signature=identity("mallory").sign(b"qsecret/v1/group-change\x00"
                                                        + unsigned.body()))
    with pytest.raises(ChangeRefused, match="bad signature"):
        log.receive(forged)
    assert log.counts["forged"] == 1 and "mallory" not in log.roster.members
    # Someone never added cannot sign themselves in either.
    with pytest.raises(ChangeRefused, match="never added"):
        log.receive(_change(log, "mallory", Op.ADD, members=[("eve", _id("eve"))]))


def test_a_creator_other_than_the_verified_contact_is_refused() -> None:
    with pytest.raises(ChangeRefused, match="not the identity you verified"):
        GroupLog(_create("bob"), creator=identity("mallory").public)


def test_a_replayed_change_is_ignored_and_counted() -> None:
    log = GroupLog(_create("bob"))
    add = _change(log, "alice", Op.ADD, members=[("carol", _id("carol"))])
    assert log.receive(add) is Status.APPLIED
    remove = _change(log, "alice", Op.REMOVE, targets=["carol"])
    log.receive(remove)
    assert log.receive(_wire(add)) is Status.DUPLICATE  # carol does not come back
    assert "carol" not in log.roster.members and log.counts["duplicate"] == 1


def test_out_of_order_changes_wait_for_their_parents() -> None:
    source = GroupLog(_create("bob"))
    first = _change(source, "alice", Op.ADD, members=[("carol", _id("carol"))])
    source.receive(first)
    second = _change(source, "carol", Op.LEAVE)
    member = GroupLog(_create("bob"))
    assert member.receive(second) is Status.PENDING
    assert "carol" not in member.roster.members
    assert member.receive(first) is Status.APPLIED
    assert set(member.roster.members) == {"alice", "bob"} and not member.pending


def test_malformed_changes_are_refused_on_decode() -> None:
    log = GroupLog(_create("bob"))
    good = _change(log, "alice", Op.RENAME, name="x")
    for data in (b"", b"\xff", good.encode()[:-3]):
        with pytest.raises(MalformedMessage):
            Change.decode(data)
    with pytest.raises(MalformedMessage, match="names the group"):
        _change(log, "alice", Op.RENAME, name=" ")
    with pytest.raises(MalformedMessage):
        Change.make(identity("alice"), group_id=GROUP, op=Op.ADD, author="alice",
                    parents=log.heads(),
                    members=[(f"u{i}", _id("bob")) for i in range(MAX_MEMBERS + 1)])


def test_concurrent_changes_by_two_admins_converge_on_every_member() -> None:
    """alice and bob (both admins) change the group at once without seeing each other's
    change: alice removes bob while bob adds dave and removes carol. Every member, whatever
    order the changes reach it in, computes the same roster."""
    base = GroupLog(_create("bob", "carol"))
    promote = _change(base, "alice", Op.PROMOTE, targets=["bob"])
    base.receive(promote)
    heads = base.heads()
    by_alice = Change.make(identity("alice"), group_id=GROUP, op=Op.REMOVE, author="alice",
                           parents=heads, targets=["bob"])
    by_bob = [Change.make(identity("bob"), group_id=GROUP, op=Op.ADD, author="bob",
                          parents=heads, members=[("dave", _id("dave"))])]
    by_bob.append(Change.make(identity("bob"), group_id=GROUP, op=Op.REMOVE, author="bob",
                              parents=[by_bob[0].id], targets=["carol"]))
    merged = Change.make(identity("alice"), group_id=GROUP, op=Op.RENAME, author="alice",
                         parents=[by_alice.id, by_bob[1].id], name="after")
    changes = [promote, by_alice, *by_bob, merged]
    rosters = set()
    for order in itertools.permutations(changes):
        member = GroupLog(_create("bob", "carol"))
        for change in order:
            member.receive(_wire(change))
        assert not member.pending
        roster = member.roster
        rosters.add((tuple(sorted(roster.members)), tuple(sorted(roster.admins)),
                     roster.name, tuple(roster.applied)))
    assert len(rosters) == 1, rosters
    (members, admins, name, _), = rosters
    assert name == "after" and "bob" not in admins
    # Whichever of the concurrent changes sorts first decides; both outcomes are allowed,
    # but bob cannot both be removed and still act after his removal.
    if by_alice.id < by_bob[0].id:
        assert members == ("alice", "carol")
    else:
        assert "bob" not in members


def test_random_concurrent_histories_converge() -> None:
    rng = random.Random(7)
    admins = ["alice", "bob"]
    for _round in range(20):
        base = GroupLog(_create("bob", "carol"))
        base.receive(_change(base, "alice", Op.PROMOTE, targets=["bob"]))
        made: list[Change] = []
        views = {a: GroupLog(_create("bob", "carol")) for a in admins}
        for view in views.values():
            for change in base.order()[1:]:
                view.receive(change)
        for _ in range(6):
            author = rng.choice(admins)
            view = views[author]
            if author not in view.roster.admins:
                continue  # removed by the other (a client makes only changes it may make)
            op = rng.choice([Op.ADD, Op.REMOVE, Op.RENAME])
            if op is Op.ADD:
                handle = f"u{rng.randrange(1000)}"
                change = _change(view, author, Op.ADD, members=[(handle, _id("carol"))])
            elif op is Op.REMOVE:
                others = [m for m in view.roster.members if m != author]
                if not others:
                    continue
                change = _change(view, author, Op.REMOVE, targets=[rng.choice(others)])
            else:
                change = _change(view, author, Op.RENAME, name=f"n{rng.randrange(99)}")
            view.receive(change)
            made.append(change)
            if rng.random() < 0.3:  # now and then they sync
                for other in views.values():
                    for known in made:
                        other.receive(known)
        results = set()
        for _ in range(4):
            member = GroupLog(_create("bob", "carol"))
            everything = base.order()[1:] + made
            rng.shuffle(everything)
            for change in everything:
                member.receive(change)
            roster = member.roster
            results.add((tuple(roster.members), tuple(sorted(roster.admins)), roster.name))
        assert len(results) == 1, results


def test_changes_for_another_group_are_refused() -> None:
    log = GroupLog(_create("bob"))
    other = Change.make(identity("alice"), group_id=os.urandom(16), op=Op.RENAME,
                        author="alice", parents=log.heads(), name="x")
    with pytest.raises(ChangeRefused, match="another group"):
        log.receive(other)
