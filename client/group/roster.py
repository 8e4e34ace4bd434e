"""Group membership that every member checks: signed changes, folded the same way by all.

A group's membership is a log of **changes** (create, add, remove, leave, rename, promote,
demote), each signed by its author with the hybrid identity signature (Ed25519 + ML-DSA-65)
and naming the changes its author had seen (``parents``): the log is a DAG whose root is
the one ``create``. A member applies a change only when its parents are there, its
signature verifies under the author's identity as the DAG recorded it (the ``create`` or
``add`` that brought the author in must be among the change's ancestors), its author had the
right to make it in the roster its ancestors fold to (an admin; a member, for ``leave``) and it
was not seen before. That last check depends on the change and its ancestors only, so every
member decides the same; an honest client never makes a change it has no right to (it checks
its own roster first), so what fails it is forged by a member's client and never enters the
log (which would otherwise carry it to every member, and every member added later, for good).
The roster is then a **deterministic fold** of the whole DAG: a topological order in which
ties (concurrent changes) go by change ID, each change taking effect only if it is allowed
in the roster built so far (its author a member; an admin for everything but
``leave``; targets present or absent as the operation needs). So two admins changing the
membership at once reach, on every member, the same roster: whoever sorts first wins, and a
change made invalid by it (an admin removed a moment before adding someone) has no effect,
with its reason kept.

Change encoding: canonical CBOR (RFC 8949 §4.2.1) of ``{"v": 1, "g": group ID, "op": op,
"by": author, "p": [parent IDs, sorted], "m": [[handle, identity], ...], "t": [handles],
"n": name, "at": unix ms}``; the signature covers ``"qsecret/v1/group-change\\x00" ||``
those bytes; the change ID is SHA-256 of them. The wire form is ``{"c": those bytes,
"s": signature}``.
"""

from __future__ import annotations

import enum
import hashlib
import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

import cbor2

from client.protocol.errors import BadSignature, MalformedMessage, UnsupportedVersion
from client.protocol.identity import Identity, PublicIdentity

CHANGE_VERSION = 1
SIGNATURE_CONTEXT = b"qsecret/v1/group-change\x00"
MAX_MEMBERS = 100
MAX_NAME_CHARS = 100
MAX_HANDLE_CHARS = 64
MAX_PARENTS = 32
MAX_PENDING = 1000  # changes held for missing parents, per group


class Op(enum.Enum):
    CREATE = "create"
    ADD = "add"
    REMOVE = "remove"
    LEAVE = "leave"
    RENAME = "rename"
    PROMOTE = "promote"
    DEMOTE = "demote"


class ChangeRefused(Exception):
    """A change that cannot enter the log (forged, malformed, foreign) - with the reason."""


@dataclass(frozen=True)
class Change:
    """One signed membership change (build with :meth:`make`, read with :meth:`decode`)."""

    group_id: bytes
    op: Op
    author: str
    parents: tuple[bytes, ...]
    members: tuple[tuple[str, bytes], ...] = ()  # create/add: (handle, identity encoding)
    targets: tuple[str, ...] = ()  # remove/promote/demote
    name: str = ""  # create/rename
    at: int = 0  # unix milliseconds, as the author's clock says (shown, never trusted)
    signature: bytes = b""

    def body(self) -> bytes:
        """The signed bytes (canonical CBOR of every field but the signature)."""
        return self._body

    # Computed once per change: the fold asks every change for its ID each time a change
    # arrives, and a create lists up to 100 identities (about 200 KB to encode again).
    @cached_property
    def _body(self) -> bytes:
        return cbor2.dumps({
            "v": CHANGE_VERSION, "g": self.group_id, "op": self.op.value, "by": self.author,
            "p": sorted(self.parents), "m": [list(m) for m in self.members],
            "t": list(self.targets), "n": self.name, "at": self.at,
        }, canonical=True)

    @cached_property
    def id(self) -> bytes:
        return hashlib.sha256(self._body).digest()

    @classmethod
    def make(cls, identity: Identity, *, group_id: bytes, op: Op, author: str,
             parents: Iterable[bytes], members: Iterable[tuple[str, bytes]] = (),
             targets: Iterable[str] = (), name: str = "", at: int = 0) -> Change:
        unsigned = cls(group_id, op, author, tuple(sorted(parents)), tuple(members),
                       tuple(targets), name, at)
        _check_shape(unsigned)
        signature = identity.sign(SIGNATURE_CONTEXT + unsigned.body())
        return cls(unsigned.group_id, op, author, unsigned.parents, unsigned.members,
                   unsigned.targets, name, at, signature)

    def encode(self) -> bytes:
        return cbor2.dumps({"c": self.body(), "s": self.signature}, canonical=True)

    @classmethod
    def decode(cls, data: bytes) -> Change:
        """Parse untrusted bytes (the signature is checked by :class:`GroupLog`)."""
        try:
            outer = cbor2.loads(data)
            body = outer["c"]
            raw = cbor2.loads(body)
            signature = outer["s"]
        except Exception as exc:  # cbor2 raises several types for malformed input
            raise MalformedMessage(f"group change is not valid CBOR: {exc}") from None
        if not isinstance(raw, dict) or not isinstance(signature, bytes):
            raise MalformedMessage("group change has the wrong shape")
        if raw.get("v") != CHANGE_VERSION:
            raise UnsupportedVersion(f"group change version {raw.get('v')!r} is not supported")
        if set(raw) != {"v", "g", "op", "by", "p", "m", "t", "n", "at"}:
            raise MalformedMessage(f"group change fields {sorted(map(str, raw))}")
        try:
            op = Op(raw["op"])
            members = tuple((m[0], m[1]) for m in raw["m"] if isinstance(m, list) and len(m) == 2)
            if len(members) != len(raw["m"]):
                raise ValueError("members must be [handle, identity] pairs")
            change = cls(raw["g"], op, raw["by"], tuple(raw["p"]), members,
                         tuple(raw["t"]), raw["n"], raw["at"], signature)
        except (ValueError, TypeError, KeyError) as exc:
            raise MalformedMessage(f"group change: {exc}") from None
        _check_shape(change)
        if change.body() != body:
            raise MalformedMessage("group change is not in canonical encoding")
        return change


def _check_shape(change: Change) -> None:
    """Types and limits, whatever the roster says (raise MalformedMessage)."""
    def handle_ok(value: object) -> bool:
        return isinstance(value, str) and 0 < len(value) <= MAX_HANDLE_CHARS

    if not isinstance(change.group_id, bytes) or len(change.group_id) != 16:
        raise MalformedMessage("group ID must be 16 bytes")
    if not handle_ok(change.author):
        raise MalformedMessage("group change author must be a handle")
    if len(change.parents) > MAX_PARENTS or not all(
            isinstance(p, bytes) and len(p) == 32 for p in change.parents):
        raise MalformedMessage(f"a group change names 0..{MAX_PARENTS} parent IDs of 32 bytes")
    if (change.op is Op.CREATE) != (not change.parents):
        raise MalformedMessage("only a create has no parents, and a create has none")
    if len(change.members) > MAX_MEMBERS or not all(
            handle_ok(h) and isinstance(i, bytes) for h, i in change.members):
        raise MalformedMessage("group change members must be (handle, identity) pairs")
    if len(change.targets) > MAX_MEMBERS or not all(handle_ok(t) for t in change.targets):
        raise MalformedMessage("group change targets must be handles")
    if not isinstance(change.name, str) or len(change.name) > MAX_NAME_CHARS:
        raise MalformedMessage(f"a group name has at most {MAX_NAME_CHARS} characters")
    if not isinstance(change.at, int) or isinstance(change.at, bool) or change.at < 0:
        raise MalformedMessage("group change time must be a non-negative integer")
    needs = {Op.CREATE: "members", Op.ADD: "members", Op.REMOVE: "targets",
             Op.PROMOTE: "targets", Op.DEMOTE: "targets"}.get(change.op)
    if needs == "members" and not change.members:
        raise MalformedMessage(f"a {change.op.value} names who joins")
    if needs == "targets" and not change.targets:
        raise MalformedMessage(f"a {change.op.value} names whom it concerns")
    if change.op is Op.CREATE and change.members[0][0] != change.author:
        raise MalformedMessage("a create lists its author first")
    if change.op in (Op.CREATE, Op.RENAME) and not change.name.strip():
        raise MalformedMessage(f"a {change.op.value} names the group")


@dataclass
class Roster:
    """The membership a fold arrives at."""

    group_id: bytes
    name: str = ""
    members: dict[str, bytes] = field(default_factory=dict)  # handle -> identity, join order
    admins: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)  # removed or left, ever
    applied: list[bytes] = field(default_factory=list)  # change IDs with an effect, in order
    refused: dict[bytes, str] = field(default_factory=dict)  # change ID -> why no effect

    def is_member(self, handle: str) -> bool:
        return handle in self.members


def _effect(roster: Roster, change: Change) -> str | None:
    """Apply ``change`` to ``roster`` if allowed; return the reason when it is not."""
    author = change.author
    if change.op is Op.CREATE:
        if roster.members or roster.applied:
            return "a group is created once"
        roster.name = change.name
        for handle, identity in change.members:
            roster.members[handle] = identity
        roster.admins.add(author)
        return None
    if author not in roster.members:
        return f"{author} is not a member"
    if change.op is Op.LEAVE:
        if roster.admins == {author} and len(roster.members) > 1:
            return f"{author} is the last admin: make another member an admin first"
        del roster.members[author]
        roster.admins.discard(author)
        roster.removed.add(author)
        return None
    if author not in roster.admins:
        return f"{author} is not an admin"
    if change.op is Op.RENAME:
        roster.name = change.name
        return None
    if change.op is Op.ADD:
        joining = [h for h, _ in change.members]
        if any(h in roster.members for h in joining):
            return "already a member: " + ", ".join(h for h in joining if h in roster.members)
        if len(roster.members) + len(joining) > MAX_MEMBERS:
            return f"a group has at most {MAX_MEMBERS} members"
        for handle, identity in change.members:
            roster.members[handle] = identity
            roster.removed.discard(handle)
        return None
    missing = [t for t in change.targets if t not in roster.members]
    if missing:
        return "not a member: " + ", ".join(missing)
    if change.op is Op.REMOVE:
        if author in change.targets:
            return "to leave a group, leave it (a remove names others)"
        for target in change.targets:
            del roster.members[target]
            roster.admins.discard(target)
            roster.removed.add(target)
        return None
    if change.op is Op.PROMOTE:
        roster.admins.update(change.targets)
        return None
    # DEMOTE
    if roster.admins <= set(change.targets):
        return "a group keeps at least one admin"
    roster.admins.difference_update(change.targets)
    return None


class Status(enum.Enum):
    APPLIED = "applied"  # in the log now (it may still have had no effect: see refused)
    DUPLICATE = "duplicate"  # seen before: a replay or a resend, ignored
    PENDING = "pending"  # a parent is missing: held until it arrives


class GroupLog:
    """Every change of one group that passed the checks, and the roster they fold to."""

    def __init__(self, create: Change, creator: PublicIdentity | None = None) -> None:
        """Start from the group's ``create``; ``creator`` is the identity this member has
        pinned for its author, if any (then the create must be signed with it)."""
        if create.op is not Op.CREATE:
            raise ChangeRefused("a group log starts with its create")
        identity = dict(create.members)[create.author]
        if creator is not None and identity != creator.encode():
            raise ChangeRefused(f"the group's creator {create.author!r} is not the identity "
                                "you verified for them")
        self._verify(create, [identity])
        self.group_id = create.group_id
        self.changes: dict[bytes, Change] = {create.id: create}
        self._ancestors: dict[bytes, frozenset[bytes]] = {create.id: frozenset()}
        self.pending: dict[bytes, Change] = {}
        self.counts = {"forged": 0, "duplicate": 0, "foreign": 0, "pending_dropped": 0,
                       "unauthorised": 0}
        self._check_rights = True
        self.roster = self._fold()

    @staticmethod
    def _verify(change: Change, identities: Iterable[bytes]) -> None:
        """The signature must verify under one of the identities the DAG vouches for (one,
        unless the author was removed and added again with a new identity)."""
        candidates = sorted(set(identities))
        if not candidates:
            raise ChangeRefused(f"{change.author!r} was never added to this group before "
                                "this change: nobody vouches for their identity")
        for identity in candidates:
            try:
                PublicIdentity.decode(identity).verify(SIGNATURE_CONTEXT + change.body(),
                                                       change.signature)
            except (BadSignature, MalformedMessage):
                continue
            return
        raise ChangeRefused(f"group change by {change.author!r} has a bad signature: "
                            "forged or damaged")

    def export(self) -> list[bytes]:
        """Every change in fold order, then those waiting for parents (see :meth:`restore`)."""
        return [c.encode() for c in self.order()] + [c.encode() for c in self.pending.values()]

    @classmethod
    def restore(cls, encoded: list[bytes], counts: dict[str, int] | None = None) -> GroupLog:
        """The log :meth:`export` gave (every signature is checked again)."""
        changes = [Change.decode(data) for data in encoded]
        log = cls(changes[0])
        log._check_rights = False  # admitted before (maybe by a version without that check)
        for change in changes[1:]:
            try:
                log.receive(change)
            except ChangeRefused as exc:  # cannot happen to what passed before: say so
                raise MalformedMessage(f"stored group log does not check: {exc}") from None
        log._check_rights = True
        log.counts.update(counts or {})
        return log

    def ancestors(self, change_id: bytes) -> frozenset[bytes]:
        return self._ancestors.get(change_id, frozenset())

    def heads(self) -> tuple[bytes, ...]:
        """The changes no other change names as a parent: what a new change builds on."""
        named = {p for c in self.changes.values() for p in c.parents}
        return tuple(sorted(cid for cid in self.changes if cid not in named))

    def receive(self, change: Change) -> Status:
        """Take a change from any member; raise ChangeRefused when it can never enter."""
        if change.group_id != self.group_id:
            self.counts["foreign"] += 1
            raise ChangeRefused("group change for another group")
        cid = change.id
        if cid in self.changes or cid in self.pending:
            self.counts["duplicate"] += 1
            return Status.DUPLICATE
        if change.op is Op.CREATE:
            self.counts["forged"] += 1
            raise ChangeRefused("a second create for an existing group")
        if any(p not in self.changes for p in change.parents):
            if len(self.pending) >= MAX_PENDING:
                self.counts["pending_dropped"] += 1
                raise ChangeRefused(f"more than {MAX_PENDING} group changes wait for missing "
                                    "parents: dropped (a member resends what you lack)")
            self.pending[cid] = change
            return Status.PENDING
        self._admit(change)
        self._admit_pending()
        self.roster = self._fold()
        return Status.APPLIED

    def _admit(self, change: Change) -> None:
        ancestors = frozenset().union(*(self._ancestors[p] | {p} for p in change.parents))
        vouched = [encoded for cid in ancestors for handle, encoded in self.changes[cid].members
                   if handle == change.author]
        try:
            self._verify(change, vouched)
        except ChangeRefused:
            self.counts["forged"] += 1
            raise
        if self._check_rights:
            reason = self._no_right(change, ancestors)
            if reason is not None:
                self.counts["unauthorised"] += 1
                raise ChangeRefused(f"group change by {change.author!r} refused: {reason}")
        self.changes[change.id] = change
        self._ancestors[change.id] = ancestors

    def _admit_pending(self) -> None:
        progress = True
        while progress:
            progress = False
            for cid, change in list(self.pending.items()):
                if all(p in self.changes for p in change.parents):
                    del self.pending[cid]
                    try:
                        self._admit(change)
                    except ChangeRefused:
                        continue  # counted; it never enters
                    progress = True

    def _no_right(self, change: Change, ancestors: frozenset[bytes]) -> str | None:
        """Why ``change``'s author had no right to make it in the roster its ancestors fold
        to (None: they had)."""
        if change.op is Op.CREATE:
            return None
        roster = self._fold(ancestors)
        if change.author not in roster.members:
            return f"{change.author} was not a member in the group their change builds on"
        if change.op is not Op.LEAVE and change.author not in roster.admins:
            return f"{change.author} is not an admin"
        return None

    def order(self, only: frozenset[bytes] | None = None) -> list[Change]:
        """Topological order, concurrent changes by ID: the same on every member (``only``:
        of those changes, closed under ancestry)."""
        changes = self.changes if only is None else {c: self.changes[c] for c in only}
        children: dict[bytes, list[bytes]] = {cid: [] for cid in changes}
        waiting = {cid: len(c.parents) for cid, c in changes.items()}
        for cid, change in changes.items():
            for parent in change.parents:
                children[parent].append(cid)
        ready = [cid for cid, count in waiting.items() if count == 0]
        heapq.heapify(ready)
        out = []
        while ready:
            cid = heapq.heappop(ready)
            out.append(changes[cid])
            for child in children[cid]:
                waiting[child] -= 1
                if waiting[child] == 0:
                    heapq.heappush(ready, child)
        return out

    def _fold(self, only: frozenset[bytes] | None = None) -> Roster:
        roster = Roster(self.group_id)
        for change in self.order(only):
            reason = _effect(roster, change)
            if reason is None:
                roster.applied.append(change.id)
            else:
                roster.refused[change.id] = reason
        return roster
