"""One member's view of one group: its membership log, its sender key, the others' keys.

Sans-I/O. The messenger feeds it membership changes, sender-key records (which arrive
through the pairwise sessions) and group messages, and sends what it returns:

- :meth:`GroupSession.encrypt` gives one group message for every member plus the sender-key
  records members still lack (each goes out through that member's pairwise session first);
- a new sender key (generation) is made after any removal or departure, and when the
  schedule says so (``sender_keys.ROTATE_AFTER_*``), before the next message;
- a record for a new generation says where the previous one ended (``previous_end``), so
  messages sent under the old key before the rotation still open, and anything later under
  it is refused as retired: a removed member, who holds only old keys, gets nothing new,
  and nothing honest is lost.

Refusals are exceptions with a reason (:class:`NotAMember`, :class:`RetiredSenderKey`,
:class:`UnknownSenderKey` and the protocol's own) and are counted in ``counts``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from client.protocol.codec import Reader, Writer
from client.protocol.errors import MalformedMessage, ProtocolError

from .roster import Change, GroupLog, Op, Status
from .sender_keys import (
    OwnSenderKey,
    PeerSenderKey,
    SenderKeyRecord,
    chain_key_at,
    parse_group_message,
)


class NotAMember(ProtocolError):
    """A group message or sender key from someone who is not (or no longer) a member."""


class RetiredSenderKey(ProtocolError):
    """A message under a sender key its owner replaced (after a removal or on schedule)."""


class UnknownSenderKey(ProtocolError):
    """A message under a sender key not received yet: hold it until the record arrives."""


@dataclass(frozen=True)
class Distribution:
    """A sender-key record for a new generation, and where the previous one ended."""

    record: SenderKeyRecord
    previous_end: int  # messages sent under generation - 1 (0 for the first)

    def encode(self) -> bytes:
        return Writer().u32(self.previous_end).b16(self.record.encode()).getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Distribution:
        reader = Reader(data, "sender key distribution")
        previous_end = reader.u32()
        record = SenderKeyRecord.decode(reader.b16())
        reader.done()
        return cls(record, previous_end)


@dataclass(frozen=True)
class Outgoing:
    wire: bytes  # one group message, the same bytes for every recipient
    recipients: tuple[str, ...]
    distributions: dict[str, Distribution]  # member -> record to send them first


@dataclass
class _Peer:
    keys: dict[int, PeerSenderKey] = field(default_factory=dict)  # generation -> chain
    ends: dict[int, int] = field(default_factory=dict)  # retired generation -> its end


class GroupSession:
    def __init__(self, me: str, log: GroupLog) -> None:
        self.me = me
        self.log = log
        self.own: OwnSenderKey | None = None
        self._previous_end = 0
        # member -> the iteration their copy of self.own's record starts at; and the chain
        # key of iteration 0, so a record lost on the way can be sent again from there
        self._sent_at: dict[str, int] = {}
        self._origin = b""
        self._rotate = False
        self._removals_seen = len(self.log.roster.removed)
        self._peers: dict[str, _Peer] = {}
        self.counts = {"not_member": 0, "retired": 0, "unknown_key": 0, "bad": 0}

    # -------------------------------------------------------------------- membership

    @property
    def members(self) -> tuple[str, ...]:
        return tuple(self.log.roster.members)

    def receive_change(self, change: Change) -> Status:
        """A membership change (raises ChangeRefused for a forged or foreign one)."""
        status = self.log.receive(change)
        removed = self.log.roster.removed
        if len(removed) != self._removals_seen:
            self._removals_seen = len(removed)
            self._rotate = True  # someone left or was removed: a new key before sending
        for handle in removed:
            self._peers.pop(handle, None)
        return status

    def make_change(self, identity, op: Op, **fields) -> Change:  # type: ignore[no-untyped-def]
        """Sign a change on top of everything this member has seen, and apply it here."""
        change = Change.make(identity, group_id=self.log.group_id, op=op, author=self.me,
                             parents=self.log.heads(), **fields)
        self.receive_change(change)
        return change

    # ---------------------------------------------------------------------- sending

    @property
    def rotation_due(self) -> bool:
        """A removal or departure happened since this member's key was made."""
        return self._rotate

    def prepare(self, now: float | None = None) -> dict[str, Distribution]:
        """Make a new sender key if one is due; the records members still lack.

        Nothing is marked as held: the messenger sends each record through the pairwise
        session, then calls :meth:`delivered` (so a crash in between resends, never skips).
        """
        if self.me not in self.log.roster.members:
            raise NotAMember("you are not a member of this group any more")
        if self.own is None or self._rotate or self.own.due_for_rotation(now):
            generation = 1 if self.own is None else self.own.generation + 1
            self._previous_end = 0 if self.own is None else self.own.iteration
            self.own = OwnSenderKey.new(self.log.group_id, self.me, generation, now)
            self._origin = self.own.chain_key
            self._sent_at = {}
            self._rotate = False
        record = self.own.record()
        return {m: Distribution(record, self._previous_end) for m in self.others()
                if m not in self._sent_at}

    def delivered(self, members: Iterable[str]) -> None:
        """These members were sent the current key's record (it is durable in their outbox)."""
        assert self.own is not None
        for member in members:
            self._sent_at.setdefault(member, self.own.iteration)

    def resend(self, member: str) -> Distribution | None:
        """The record ``member`` was sent, again, from the same iteration (it was lost: e.g.
        the pairwise session it went on lost a tie to the member's own)."""
        start = self._sent_at.get(member)
        if self.own is None or start is None or member not in self.others():
            return None
        record = SenderKeyRecord(self.log.group_id, self.me, self.own.generation, start,
                                 chain_key_at(self._origin, start), self.own.signing_public)
        return Distribution(record, self._previous_end)

    def others(self) -> tuple[str, ...]:
        return tuple(m for m in self.log.roster.members if m != self.me)

    def seal(self, plaintext: bytes, now: float | None = None) -> bytes:
        """One group message under the current key (call :meth:`prepare` first)."""
        if self.me not in self.log.roster.members:
            raise NotAMember("you are not a member of this group any more")
        if self.own is None or self._rotate or self.own.due_for_rotation(now):
            raise ProtocolError("a new sender key is due: prepare() before sealing")
        return self.own.encrypt(plaintext)

    def encrypt(self, plaintext: bytes, now: float | None = None) -> Outgoing:
        """prepare + delivered + seal in one step (when the records surely arrive)."""
        due = self.prepare(now)
        self.delivered(due)
        return Outgoing(self.seal(plaintext, now), self.others(), due)

    # -------------------------------------------------------------------- receiving

    def receive_distribution(self, sender: str, data: bytes) -> None:
        """A sender-key record that came through ``sender``'s pairwise session."""
        dist = Distribution.decode(data)
        record = dist.record
        if record.group_id != self.log.group_id or record.sender != sender:
            self.counts["bad"] += 1
            raise MalformedMessage("sender key for another group or from another member")
        if sender not in self.log.roster.members:
            self.counts["not_member"] += 1
            raise NotAMember(f"{sender} is not a member of this group: sender key refused")
        peer = self._peers.setdefault(sender, _Peer())
        if record.generation in peer.keys or record.generation in peer.ends:
            return  # a resend
        previous = record.generation - 1
        if previous >= 1:
            peer.ends[previous] = dist.previous_end
        for generation in [g for g in peer.keys if g < previous]:
            peer.ends.setdefault(generation, peer.keys[generation].iteration)
            del peer.keys[generation]
        peer.keys[record.generation] = PeerSenderKey.from_record(record)

    def decrypt(self, wire: bytes) -> tuple[str, bytes]:
        """(sender, plaintext) of a group message, or a refusal with its reason."""
        header = parse_group_message(wire)[0]
        if header.group_id != self.log.group_id:
            self.counts["bad"] += 1
            raise MalformedMessage("group message for another group")
        sender = header.sender
        if sender not in self.log.roster.members or sender == self.me:
            self.counts["not_member"] += 1
            raise NotAMember(f"group message from {sender}, who is not a member: refused")
        peer = self._peers.get(sender)
        key = None if peer is None else peer.keys.get(header.generation)
        end = None if peer is None else peer.ends.get(header.generation)
        if end is not None and header.iteration >= end:
            self.counts["retired"] += 1
            raise RetiredSenderKey(f"{sender}'s sender key {header.generation} was replaced "
                                   f"after message {end}: this one is refused")
        if key is None:
            self.counts["unknown_key"] += 1
            raise UnknownSenderKey(f"no sender key {header.generation} from {sender} yet")
        try:
            return sender, key.decrypt(wire)
        except ProtocolError:
            self.counts["bad"] += 1
            raise

    # ------------------------------------------------------------------- persisting

    def keys_to_dict(self) -> dict[str, Any]:
        """Everything but the log (stored apart: it changes rarely, the keys every message)."""
        return {
            "own": None if self.own is None else self.own.to_dict(),
            "previous_end": self._previous_end, "sent_at": dict(self._sent_at),
            "origin": self._origin,
            "rotate": self._rotate, "removals_seen": self._removals_seen,
            "peers": {h: {"keys": {g: k.to_dict() for g, k in p.keys.items()},
                          "ends": dict(p.ends)} for h, p in self._peers.items()},
            "counts": dict(self.counts),
        }

    @classmethod
    def restore(cls, me: str, log: GroupLog, keys: dict[str, Any] | None) -> GroupSession:
        session = cls(me, log)
        if not keys:
            return session
        own = keys["own"]
        session.own = None if own is None else OwnSenderKey.from_dict(own)
        session._previous_end = keys["previous_end"]
        session._sent_at = dict(keys["sent_at"])
        session._origin = keys["origin"]
        session._rotate = keys["rotate"]
        session._removals_seen = keys["removals_seen"]
        session._peers = {h: _Peer({int(g): PeerSenderKey.from_dict(k)
                                    for g, k in p["keys"].items()},
                                   {int(g): e for g, e in p["ends"].items()})
                          for h, p in keys["peers"].items()}
        session.counts.update(keys["counts"])
        return session

    def has_key(self, sender: str, generation: int) -> bool:
        peer = self._peers.get(sender)
        return peer is not None and generation in peer.keys
