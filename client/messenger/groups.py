"""Groups in the messenger: what client.group computes, carried and kept.

- **Membership changes** (signed by an admin's hybrid identity, client.group.roster) go to
  every member as ``group_changes`` payloads through the pairwise sessions; a member just
  added gets the group's whole log. A member that admits a change its author could not have
  sent to some member (one added concurrently) forwards it to them, so concurrent changes
  by two admins reach everyone and fold to the same roster everywhere.
- **Sender keys** (client.group.session) go as ``sender_key`` payloads through the pairwise
  sessions, so they ride on that session's ``QKD+ML-KEM-768+X25519`` keys (or the pad).
  Every member makes a new one as soon as it learns of a removal or departure (and on the
  schedule, before its next message).
- **Group messages** are sealed once with the sender key and uploaded once with their
  recipient list (relay ``send_group``): relay body = ``0x10`` || group message.
- **Receipts** (``group_receipt`` payloads: delivered when a message is committed, read when
  it is shown) go to the message's sender only, through the pairwise session, batched: every
  id owed to one sender in one payload, read superseding delivered. The ids owed are kept in
  the group's key state (committed with the message itself), so a receipt not sent before a
  stop goes at the next start; one flush runs at a time and what comes in meanwhile waits
  for the next, so a backlog of N messages costs far fewer than N receipts. The sender counts
  them per message in the store (``group_receipts``) and shows "✓ 3/4 delivered · 2/4 read".
  Why not the group channel: a sender-key message to one member would leave a gap in the
  chain every other member then holds skipped keys for, and a receipt to everyone is the
  storm (N² deliveries) this avoids; the pairwise session reaches exactly the sender, is
  already open (the sender key came through it) and steps symmetrically, with no KME call.

Bad input is refused with its reason, logged and counted (``GroupView.refused``): a message
from a non-member, a forged or replayed change, a message under a retired key. A message
whose sender key has not arrived yet is held (not acknowledged) until the key comes.

Nothing here waits on the relay's read loop while holding a group's lock: the read loop
delivers into this module, so work that needs the relay (a bundle for a new member, an
answer to wait for) runs beside it (``spawn``) or outside the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from client.group.roster import MAX_MEMBERS, Change, ChangeRefused, GroupLog, Op, Status
from client.group.sender_keys import parse_group_message
from client.group.session import Distribution, GroupSession, UnknownSenderKey
from client.protocol import ProtocolError
from client.protocol.identity import Identity
from client.protocol.session import wire_id
from client.store.sealed import CorruptStore
from client.store.store import GroupReceipts, Store, group_key
from relay.wire import Deliver, Error, StoredGroup

from . import payload as payloads
from .api import (
    ConversationId,
    Delivery,
    ErrorEvent,
    Event,
    GroupChangeView,
    GroupCounts,
    GroupEvent,
    GroupReceiptEvent,
    GroupView,
    MessageEvent,
    MessageView,
    MessengerError,
)
from .relay_link import RelayError

log = logging.getLogger(__name__)

GROUP_ENVELOPE = 0x10  # first byte of a relay body holding a group message (never a session's)
MEMBERS_PER_CHANGE = 16  # identities (~2 KiB each) per create/add: a change fits an envelope
MAX_HELD = 256  # group messages held for their sender key; beyond, the relay redelivers
MAX_PARKED = 200  # records and changes kept for a group or member not known yet
MAX_OWED = 5000  # receipts owed per group (beyond, the oldest are dropped: best effort)
SEND_TIMEOUT_S = 15.0
SENDER_KEY_LABEL = "sender key"


def is_group_envelope(body: bytes) -> bool:
    return bool(body) and body[0] == GROUP_ENVELOPE


class Pairwise(Protocol):
    """What groups need of the rest of the messenger (the service)."""

    async def ensure_session(self, conversation: ConversationId) -> str: ...
    async def send_pairwise(self, conversation: ConversationId, body: payloads.Payload,
                            *, wait: bool) -> None: ...
    def pairwise_held_from(self, peer: str) -> bool: ...


class GroupRelay(Protocol):
    @property
    def ready(self) -> bool: ...
    async def send_group(self, to: tuple[str, ...], body: bytes, msg_id: str) -> None: ...
    async def ack(self, seqs: list[int]) -> None: ...


Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any] | None"]


@dataclass
class _Group:
    group_id: bytes
    session: GroupSession | None = None  # None: known only by records parked for it
    parked_keys: list[tuple[str, bytes, str]] = field(default_factory=list)  # sender, record, label
    parked_changes: list[bytes] = field(default_factory=list)
    labels: dict[tuple[str, int], str] = field(default_factory=dict)  # (sender, gen) -> label
    shown_in: int = 0  # incoming messages shown (``unread`` is what came after)
    unsent: list[tuple[str, bytes]] = field(default_factory=list)  # (member, change): retry
    refused: dict[str, int] = field(default_factory=dict)  # reasons counted here
    owed: list[tuple[str, str, str]] = field(default_factory=list)  # (sender, state, text ID)

    @property
    def name(self) -> str:
        return self.session.log.roster.name if self.session else ""

    def keys_state(self) -> dict[str, Any]:
        return {"session": self.session.keys_to_dict() if self.session else None,
                "parked_keys": [list(p) for p in self.parked_keys],
                "parked_changes": list(self.parked_changes),
                "labels": [[s, g, label] for (s, g), label in self.labels.items()],
                "shown_in": self.shown_in, "refused": dict(self.refused),
                "unsent": [list(u) for u in self.unsent],
                "owed": [list(o) for o in self.owed]}

    def log_state(self) -> dict[str, Any] | None:
        if self.session is None:
            return None
        return {"changes": self.session.log.export(), "counts": dict(self.session.log.counts)}


class Groups:
    def __init__(self, store: Store, identity: Identity, handle: str, pairwise: Pairwise,
                 relay: GroupRelay, emit: Callable[[Event], None], spawn: Spawn) -> None:
        self._store = store
        self._identity = identity
        self._handle = handle
        self._pairwise = pairwise
        self._relay = relay
        self._emit = emit
        self._spawn = spawn
        self._groups: dict[bytes, _Group] | None = None
        self._locks: dict[bytes, asyncio.Lock] = {}
        self._held: dict[int, Deliver] = {}  # relay seq -> a message waiting for its key
        self._waiters: dict[str, asyncio.Future[StoredGroup]] = {}
        self._outbox_ids: dict[str, int] = {}
        self._work: set[asyncio.Task[Any]] = set()
        self._flushing = False  # a receipt flush runs; ``_flush_again``: more came meanwhile
        self._flush_again = False
        self.stray_receipts = 0  # receipts for no group of ours (refused, logged)

    # -- state -------------------------------------------------------------------------

    def _all(self) -> dict[bytes, _Group]:
        if self._groups is None:
            self._groups = {}
            for group_id in self._store.group_ids():
                try:
                    self._groups[group_id] = self._load(group_id)
                except (CorruptStore, ProtocolError, ValueError, KeyError) as exc:
                    log.error("group %s cannot be read from the store: %s", group_id.hex(), exc)
        return self._groups

    def _load(self, group_id: bytes) -> _Group:
        loaded = self._store.load_group(group_id)
        group = _Group(group_id)
        if loaded is None:
            return group
        log_state, keys = loaded
        if log_state is not None:
            group_log = GroupLog.restore(log_state["changes"], log_state["counts"])
            group.session = GroupSession.restore(self._handle, group_log, keys["session"])
        group.parked_keys = [tuple(p) for p in keys["parked_keys"]]  # type: ignore[misc]
        group.parked_changes = list(keys["parked_changes"])
        group.labels = {(s, g): label for s, g, label in keys["labels"]}
        group.shown_in = keys["shown_in"]
        group.refused = dict(keys["refused"])
        group.unsent = [(h, c) for h, c in keys["unsent"]]
        group.owed = [(s, st, i) for s, st, i in keys.get("owed", [])]  # absent before receipts
        return group

    def _save(self, group: _Group, *, log_changed: bool = True) -> None:
        self._store.save_group(group.group_id, group.log_state() if log_changed else None,
                               group.keys_state())

    def _lock(self, group_id: bytes) -> asyncio.Lock:
        return self._locks.setdefault(group_id, asyncio.Lock())

    def find(self, name_or_id: str) -> _Group:
        """A group by its name, its ID or a prefix of its ID (MessengerError if none or
        several match)."""
        query = name_or_id.removeprefix("@")
        groups = [g for g in self._all().values() if g.session is not None]
        exact = [g for g in groups if g.name == query]
        if len(exact) == 1:
            return exact[0]
        by_id = [g for g in groups if len(query) >= 4 and g.group_id.hex().startswith(query)]
        matches = exact or by_id
        if not matches:
            raise MessengerError(f"no group called {query!r}: 'qsecret group list' shows yours")
        if len(matches) > 1:
            ids = ", ".join(g.group_id.hex()[:8] for g in matches)
            raise MessengerError(f"several groups are called {query!r} ({ids}): name one by "
                                 "its ID")
        return matches[0]

    async def _ensure(self, handle: str) -> None:
        """A pairwise session with ``handle``; offline without one, say so at once (opening
        one needs their bundle from the relay)."""
        if not self._relay.ready and self._store.load_session(handle) is None:
            raise MessengerError(f"offline, and no session with {handle} yet")
        await self._pairwise.ensure_session(ConversationId.direct(handle))

    def _session(self, group: _Group) -> GroupSession:
        assert group.session is not None
        return group.session

    # -- views -------------------------------------------------------------------------

    def view(self, group: _Group) -> GroupView:
        session = self._session(group)
        roster = session.log.roster
        status, removed_by = "member", ""
        if self._handle not in roster.members:
            status = "left"
            for change in reversed(session.log.order()):
                if (change.id in roster.applied and self._handle in change.targets
                        and change.op is Op.REMOVE):
                    status, removed_by = "removed", change.author
                    break
        changes = tuple(GroupChangeView(
            c.id.hex(), c.op.value, c.author,
            tuple(h for h, _ in c.members) or c.targets, c.name, c.at / 1000,
            roster.refused.get(c.id, "")) for c in session.log.order())
        counts = {**session.log.counts, **session.counts, **group.refused}
        counts.pop("unknown_key", None)  # held for their key, not refused
        refused = {k: v for k, v in counts.items() if v}
        own = session.own
        return GroupView(group.group_id.hex(), roster.name, tuple(roster.members),
                         tuple(m for m in roster.members if m in roster.admins), status,
                         removed_by, changes, refused, own.generation if own else 0)

    def list(self) -> list[GroupView]:
        return [self.view(g) for g in self._all().values() if g.session is not None]

    def get(self, name_or_id: str) -> GroupView:
        return self.view(self.find(name_or_id))

    def history(self, name_or_id: str, limit: int = 500) -> list[MessageView]:
        group = self.find(name_or_id)
        return self._messages(group, limit)

    def _messages(self, group: _Group, limit: int, *,
                  receipts: bool = True) -> list[MessageView]:
        counted = self._store.group_receipts(group.group_id) if receipts else {}
        out = []
        for entry in self._store.history(group_key(group.group_id), limit):
            try:
                body = payloads.decode(entry.plaintext)
            except payloads.PayloadError:
                continue
            if not isinstance(body, payloads.Text):
                continue
            outgoing = entry.direction == "out"
            counts = _counts(counted[body.id]) if outgoing and body.id in counted else None
            out.append(MessageView(
                body.id, self._handle if outgoing else entry.sender, outgoing, body.text,
                body.ts, _delivery(counts) if outgoing else Delivery.RECEIVED, entry.label,
                "group", group.group_id.hex(), group.name, counts))
        return out

    @property
    def held(self) -> int:
        """Group messages held (unacknowledged) until their sender key comes."""
        return len(self._held)

    def unread(self) -> list[MessageView]:
        """Incoming group messages not shown yet (``mark_shown`` moves the mark)."""
        out = []
        for group in self._all().values():
            if group.session is None:
                continue
            incoming = [m for m in self._messages(group, 1_000_000, receipts=False)
                        if not m.outgoing]
            out.extend(incoming[group.shown_in:])
        return out

    def mark_shown(self, name_or_id: str | None = None) -> None:
        """Everything received so far counts as shown (in one group, or in all); a read
        receipt is owed to the sender of each newly shown message (sent beside this)."""
        groups = [self.find(name_or_id)] if name_or_id else list(self._all().values())
        owed = False
        for group in groups:
            if group.session is None:
                continue
            incoming = [m for m in self._messages(group, 1_000_000, receipts=False)
                        if not m.outgoing]
            if len(incoming) != group.shown_in:
                for message in incoming[group.shown_in:]:
                    self._owe(group, message.peer, "read", message.message_id)
                    owed = True
                group.shown_in = len(incoming)
                self._save(group, log_changed=False)
        if owed:
            self._flush_soon()

    # -- membership ----------------------------------------------------------------------

    async def _identities(self, handles: list[str]) -> list[tuple[str, bytes]]:
        """The pinned identity of each handle (a session is opened with those who have none:
        their bundle is fetched and pinned, as adding a contact does)."""
        out = []
        for handle in handles:
            await self._ensure(handle)
            contact = self._store.contact(handle)
            if contact is None:
                raise MessengerError(f"no identity pinned for {handle}")
            out.append((handle, contact.identity.encode()))
        return out

    def _check_handles(self, handles: list[str]) -> list[str]:
        seen: list[str] = []
        for handle in handles:
            if handle == self._handle:
                raise MessengerError("you are in your own groups already: name the others")
            if handle not in seen:
                seen.append(handle)
        if not seen:
            raise MessengerError("name at least one member")
        if len(seen) + 1 > MAX_MEMBERS:
            raise MessengerError(f"a group has at most {MAX_MEMBERS} members")
        return seen

    async def create(self, name: str, handles: list[str]) -> GroupView:
        handles = self._check_handles(handles)
        if not name.strip() or name.startswith("@"):
            raise MessengerError("a group needs a name (not starting with @)")
        identities = await self._identities(handles)
        group_id = os.urandom(16)
        me = (self._handle, self._identity.public.encode())
        first, rest = identities[:MEMBERS_PER_CHANGE - 1], identities[MEMBERS_PER_CHANGE - 1:]
        try:
            create = Change.make(self._identity, group_id=group_id, op=Op.CREATE,
                                 author=self._handle, parents=(), members=[me, *first],
                                 name=name, at=_now_ms())
        except ProtocolError as exc:
            raise MessengerError(f"group not created: {exc}") from None
        group = _Group(group_id, GroupSession(self._handle, GroupLog(create)))
        async with self._lock(group_id):
            for start in range(0, len(rest), MEMBERS_PER_CHANGE):
                self._session(group).make_change(
                    self._identity, Op.ADD, members=rest[start:start + MEMBERS_PER_CHANGE],
                    at=_now_ms())
            self._all()[group_id] = group
            self._save(group)
        await self._send_changes(group, handles, self._session(group).log.export())
        view = self.view(group)
        self._emit(GroupEvent(view, f"you created {name} with {', '.join(handles)}"))
        return view

    def _admin(self, group: _Group) -> GroupSession:
        session = self._session(group)
        roster = session.log.roster
        if self._handle not in roster.members:
            raise MessengerError(f"you are not a member of {roster.name} any more")
        if self._handle not in roster.admins:
            raise MessengerError(f"only an admin of {roster.name} can do that "
                                 f"(admins: {', '.join(sorted(roster.admins))})")
        return session

    async def add(self, name_or_id: str, handles: list[str]) -> GroupView:
        group = self.find(name_or_id)
        session = self._admin(group)
        handles = self._check_handles(handles)
        already = [h for h in handles if h in session.log.roster.members]
        if already:
            raise MessengerError(f"already members: {', '.join(already)}")
        identities = await self._identities(handles)
        async with self._lock(group.group_id):
            before = list(session.log.roster.members)
            made = [session.make_change(self._identity, Op.ADD,
                                        members=identities[i:i + MEMBERS_PER_CHANGE],
                                        at=_now_ms())
                    for i in range(0, len(identities), MEMBERS_PER_CHANGE)]
            self._save(group)
        self._refused_here(session, made)
        await self._send_changes(group, before, [c.encode() for c in made])
        await self._send_changes(group, handles, session.log.export())  # the whole log
        view = self.view(group)
        self._emit(GroupEvent(view, f"you added {', '.join(handles)}"))
        return view

    async def remove(self, name_or_id: str, handles: list[str]) -> GroupView:
        group = self.find(name_or_id)
        session = self._admin(group)
        missing = [h for h in handles if h not in session.log.roster.members]
        if missing:
            raise MessengerError(f"not members: {', '.join(missing)}")
        return await self._change(group, Op.REMOVE, f"you removed {', '.join(handles)}",
                                  targets=self._check_handles(handles))

    async def leave(self, name_or_id: str) -> GroupView:
        group = self.find(name_or_id)
        if self._handle not in self._session(group).log.roster.members:
            raise MessengerError("you are not a member of that group any more")
        return await self._change(group, Op.LEAVE, "you left")

    async def rename(self, name_or_id: str, name: str) -> GroupView:
        group = self.find(name_or_id)
        self._admin(group)
        if not name.strip() or name.startswith("@"):
            raise MessengerError("a group needs a name (not starting with @)")
        return await self._change(group, Op.RENAME, f"you renamed the group {name}", name=name)

    async def set_admin(self, name_or_id: str, handles: list[str], admin: bool) -> GroupView:
        group = self.find(name_or_id)
        session = self._admin(group)
        missing = [h for h in handles if h not in session.log.roster.members]
        if missing:
            raise MessengerError(f"not members: {', '.join(missing)}")
        op = Op.PROMOTE if admin else Op.DEMOTE
        what = "made" if admin else "no longer made"
        return await self._change(group, op, f"you {what} {', '.join(handles)} admin",
                                  targets=handles)

    async def _change(self, group: _Group, op: Op, note: str, **fields: Any) -> GroupView:
        session = self._session(group)
        async with self._lock(group.group_id):
            before = list(session.log.roster.members)
            try:
                change = session.make_change(self._identity, op, at=_now_ms(), **fields)
            except ProtocolError as exc:
                raise MessengerError(f"not done: {exc}") from None
            self._save(group)
        self._refused_here(session, [change])
        await self._send_changes(group, before, [change.encode()])
        if session.rotation_due and self._handle in session.log.roster.members:
            try:
                await self._rotate(group)
            except (MessengerError, RelayError) as exc:  # e.g. offline, a member never met
                log.warning("group %s: the new sender key waits for the next message: %s",
                            group.name, exc)
        view = self.view(group)
        self._emit(GroupEvent(view, note))
        return view

    @staticmethod
    def _refused_here(session: GroupSession, changes: list[Change]) -> None:
        for change in changes:
            reason = session.log.roster.refused.get(change.id)
            if reason:
                raise MessengerError(f"not done: {reason}")

    async def _send_changes(self, group: _Group, handles: list[str],
                            encoded: list[bytes]) -> None:
        """``encoded`` changes to each of ``handles`` (not us), packed into payloads that fit
        an envelope; waits until the relay holds them."""
        packs: list[list[bytes]] = [[]]
        for change in encoded:
            if packs[-1] and sum(map(len, packs[-1])) + len(change) > \
                    payloads.MAX_GROUP_CHANGES_BYTES:
                packs.append([])
            packs[-1].append(change)
        targets = [h for h in handles if h != self._handle]

        online = self._relay.ready  # offline: they wait in the outbox for the next login

        async def one(handle: str) -> None:
            await self._ensure(handle)
            for pack in packs:
                await self._pairwise.send_pairwise(
                    ConversationId.direct(handle),
                    payloads.group_changes(group.group_id, pack), wait=online)

        results = await asyncio.gather(*(one(h) for h in targets), return_exceptions=True)
        failed = []
        for handle, result in zip(targets, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, MessengerError | RelayError):
                    raise result
                log.warning("group change not sent to %s yet: %s", handle, result)
                failed += [(handle, change) for change in encoded]
        if failed:  # kept, and sent again at the next login
            async with self._lock(group.group_id):
                group.unsent += [f for f in failed if f not in group.unsent]
                self._save(group, log_changed=False)

    async def _send_unsent(self) -> None:
        """Changes that could not reach a member (offline, no session yet): again."""
        for group in list(self._all().values()):
            if not group.unsent:
                continue
            async with self._lock(group.group_id):
                unsent, group.unsent = group.unsent, []
                self._save(group, log_changed=False)
            by_member: dict[str, list[bytes]] = {}
            for handle, change in unsent:
                by_member.setdefault(handle, []).append(change)
            for handle, changes in by_member.items():
                await self._send_changes(group, [handle], changes)

    # -- sender keys ---------------------------------------------------------------------

    async def _rotate(self, group: _Group) -> None:
        """A new sender key now, sent to every remaining member (after a removal)."""
        await self._distribute(group, rotate=True)

    async def _distribute(self, group: _Group, *, rotate: bool = False) -> None:
        """Send the current key's record to every member who lacks it; sessions are opened
        first (outside the lock), the records sealed into the pairwise outboxes under it."""
        session = self._session(group)
        reachable = set()
        for handle in session.others():
            try:
                await self._ensure(handle)
            except (MessengerError, RelayError) as exc:  # they get it with a later message
                log.warning("group %s: no sender key for %s yet: %s", group.name, handle, exc)
                continue
            reachable.add(handle)
        async with self._lock(group.group_id):
            if self._handle not in session.log.roster.members:
                return
            if rotate and not session.rotation_due:
                rotate = False  # somebody else's call rotated it meanwhile
            due = session.prepare()
            if not due:
                return
            sent = []
            for handle, dist in due.items():
                if handle not in reachable or not self._identity_matches(session, handle):
                    continue
                try:
                    await self._pairwise.send_pairwise(
                        ConversationId.direct(handle), payloads.sender_key(dist.encode()),
                        wait=False)
                except MessengerError as exc:
                    log.warning("sender key not sent to %s: %s", handle, exc)
                    continue
                sent.append(handle)
            session.delivered(sent)
            self._save(group, log_changed=False)

    def on_new_session(self, conversation: ConversationId) -> None:
        """The peer opened a new pairwise session with us (it may have won a tie with ours,
        whose messages were then dropped): send them our sender keys again, from where
        their copies began (beside the read loop)."""
        peer = conversation.peer
        due = [g for g in self._all().values()
               if g.session is not None and peer in g.session.others()]
        if due:
            self._background(self._resend_keys(peer, due), "group-keys-again")

    async def _resend_keys(self, peer: str, groups: list[_Group]) -> None:
        for group in groups:
            async with self._lock(group.group_id):
                dist = self._session(group).resend(peer)
                if dist is None:
                    continue
                await self._pairwise.send_pairwise(
                    ConversationId.direct(peer), payloads.sender_key(dist.encode()),
                    wait=False)

    def _identity_matches(self, session: GroupSession, handle: str) -> bool:
        """The identity the group knows for ``handle`` is the one pinned for our pairwise
        session (else a key would go to whoever holds the other): refuse and say so."""
        contact = self._store.contact(handle)
        expected = session.log.roster.members.get(handle)
        if contact is not None and contact.identity.encode() == expected:
            return True
        self._emit(ErrorEvent(MessengerError(
            f"group {session.log.roster.name}: {handle}'s identity in the group is not the one "
            "pinned for them: no sender key sent to them")))
        return False

    # -- sending -------------------------------------------------------------------------

    async def send(self, name_or_id: str, text: str, *, wait: bool) -> MessageView:
        try:
            body = payloads.text(text)
        except payloads.PayloadError as exc:
            raise MessengerError(str(exc)) from None
        group = self.find(name_or_id)
        session = self._session(group)
        if self._handle not in session.log.roster.members:
            raise MessengerError(f"you are not a member of {group.name} any more")
        await self._distribute(group)
        generation = session.own.generation if session.own else 0
        plaintext = body.encode()
        async with self._lock(group.group_id):
            session.prepare()
            if session.own is None or session.own.generation != generation:
                raise MessengerError("the group changed while sending (a new sender key): "
                                     "send again")
            wire = bytes([GROUP_ENVELOPE]) + session.seal(plaintext)
            recipients = session.others()
            msg_id = wire_id(wire)
            outbox_id = self._store.commit_group_outgoing(
                group.group_id, group.keys_state(), msg_id, recipients, wire, plaintext,
                SENDER_KEY_LABEL, text_id=body.id)
        view = MessageView(body.id, self._handle, True, text, body.ts, Delivery.PENDING,
                           SENDER_KEY_LABEL, "group", group.group_id.hex(), group.name,
                           GroupCounts(0, 0, len(recipients)) if recipients else None)
        if not recipients:
            self._store.mark_group_sent(outbox_id)
            return view
        self._outbox_ids[msg_id] = outbox_id
        waiter: asyncio.Future[StoredGroup] | None = None
        if wait:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters[msg_id] = waiter
        with contextlib.suppress(RelayError):  # offline: it stays in the group outbox
            await self._relay.send_group(recipients, wire, msg_id)
        if waiter is not None:
            try:
                stored = await asyncio.wait_for(waiter, SEND_TIMEOUT_S)
            except TimeoutError:
                raise MessengerError("the relay has not confirmed the group message yet; it "
                                     "stays in the outbox and goes at the next login") from None
            finally:
                self._waiters.pop(msg_id, None)
            if stored.refused:
                refused = ", ".join(f"{h} ({code})" for h, code in stored.refused)
                raise MessengerError(f"sent to the group, but the relay refused it for "
                                     f"{refused}")
        return view

    async def resend_all(self) -> None:
        """After a login: group messages the relay has not confirmed go again (the relay
        treats a repeat as a duplicate for every copy)."""
        for entry in self._store.group_outbox():
            self._outbox_ids[entry.message_id] = entry.id
            await self._relay.send_group(entry.recipients, entry.wire, entry.message_id)
        if any(g.unsent for g in self._all().values()):
            self._background(self._send_unsent(), "group-unsent")
        if any(g.owed for g in self._all().values()):
            self._flush_soon()

    def on_stored(self, stored: StoredGroup) -> None:
        outbox_id = self._outbox_ids.pop(stored.msg, None)
        if outbox_id is not None:
            self._store.mark_group_sent(outbox_id)
        for handle, code in stored.refused:
            log.warning("the relay did not queue group message %s for %s: %s", stored.msg,
                        handle, code)
        waiter = self._waiters.pop(stored.msg, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(stored)

    def on_error(self, error: Error) -> bool:
        """An error frame about one of our group messages (e.g. too many recipients)."""
        waiter = self._waiters.pop(error.msg or "", None)
        if waiter is None:
            return False
        if not waiter.done():
            waiter.set_exception(MessengerError(
                f"the relay refused the group message: {error.message} ({error.code})",
                code=error.code, reason=error.message))
        return True

    def stop(self) -> None:
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(MessengerError(
                    "stopped before the relay confirmed the group message; it is kept in "
                    "the outbox and sent at the next start"))
        self._waiters.clear()

    # -- receiving: pairwise payloads ------------------------------------------------------

    async def on_payload(self, conversation: ConversationId, body: payloads.GroupPayload,
                         label: str) -> None:
        """A change or a sender key that came through ``conversation``'s pairwise session."""
        if isinstance(body, payloads.GroupChanges):
            await self._on_changes(conversation.peer, body)
        elif isinstance(body, payloads.GroupReceipt):
            await self._on_receipt(conversation.peer, body)
        else:
            await self._on_sender_key(conversation.peer, body.data, label)

    async def _on_changes(self, peer: str, body: payloads.GroupChanges) -> None:
        group = self._all().get(body.group) or _Group(body.group)
        refusals: list[str] = []
        async with self._lock(group.group_id):
            fresh, was_member = self._admit_changes(group, peer, list(body.changes), refusals)
            if group.session is None:
                return
            self._all()[group.group_id] = group
            self._save(group)
        self._announce(group, fresh, was_member)
        for note in refusals:  # forged or unauthorised: the user sees it, with the reason
            self._emit(GroupEvent(self.view(group), note, refused=True))
        if fresh:
            self._background(self._after_changes(group, fresh, peer), "group-changes")
        await self._retry_held(group.group_id)

    def _admit_changes(self, group: _Group, peer: str, encoded: list[bytes],
                       refusals: list[str]) -> tuple[list[Change], bool]:
        """Take the changes (and the parked ones) into the log; (new ones, whether we were a
        member before); a line for each change refused goes to ``refusals``."""
        changes = []
        for data in encoded:
            try:
                changes.append(Change.decode(data))
            except ProtocolError as exc:
                self._refuse(group, "malformed change", f"a group change from {peer}: {exc}")
        if group.session is None:
            create = next((c for c in changes if c.op is Op.CREATE), None)
            if create is None:  # the group's log has not come yet: keep them for it
                group.parked_changes = (group.parked_changes + encoded)[-MAX_PARKED:]
                self._all()[group.group_id] = group
                self._save(group)
                return [], False
            creator = self._store.contact(create.author)
            try:
                group_log = GroupLog(create, creator.identity if creator else None)
            except ChangeRefused as exc:
                self._refuse(group, "forged change", f"a group from {peer}: {exc}")
                return [], False
            if self._handle not in group_log.roster.members and not any(
                    self._handle in (h for h, _ in c.members) for c in changes):
                self._refuse(group, "not a member", f"{peer} sent the log of a group you are "
                             "not in")
                return [], False
            group.session = GroupSession(self._handle, group_log)
            changes = [c for c in changes if c.id != create.id]
            changes += [Change.decode(d) for d in group.parked_changes]
            group.parked_changes = []
            fresh = [create]
            was_member = False
        else:
            fresh = []
            was_member = self._handle in group.session.log.roster.members
        session = group.session
        for change in changes:
            try:
                status = session.receive_change(change)
            except ChangeRefused as exc:
                log.warning("group %s: refused a change from %s: %s", session.log.roster.name,
                            peer, exc)
                refusals.append(f"refused a membership change from {peer}: {exc}")
                continue
            if status is Status.APPLIED:
                fresh.append(change)
            elif status is Status.DUPLICATE:  # harmless (a set), but counted: "duplicate"
                log.warning("group %s: refused change %s (%s by %s) from %s: a replay or a "
                            "resend of a change already applied", session.log.roster.name,
                            change.id.hex()[:8], change.op.value, change.author, peer)
        applied = set(session.log.changes)
        fresh = [c for c in fresh if c.id in applied]
        self._apply_parked_keys(group)
        return fresh, was_member

    def _announce(self, group: _Group, fresh: list[Change], was_member: bool) -> None:
        session = self._session(group)
        roster = session.log.roster
        view = self.view(group)
        for change in fresh:
            if change.author == self._handle:
                continue
            reason = roster.refused.get(change.id)
            note = _describe(change, self._handle)
            if reason:
                note += f" (no effect: {reason})"
            self._emit(GroupEvent(view, note))
        if was_member and view.status != "member":
            log.info("group %s: you were %s", roster.name, view.status)

    async def _after_changes(self, group: _Group, fresh: list[Change], peer: str) -> None:
        """Forward changes to members their author could not have known, then make a new
        sender key if anyone was removed or left (beside the read loop: may need bundles)."""
        session = self._session(group)
        joined = _joined_by(session.log)
        for change in fresh:
            known = session.log.ancestors(change.id) | {change.id}
            # Concurrent with the member's join: neither the change's author knew of them,
            # nor did whoever added them have the change (to send it with the whole log).
            targets = [m for m in session.log.roster.members
                       if m not in (self._handle, change.author, peer)
                       and joined.get(m) not in known
                       and change.id not in session.log.ancestors(joined.get(m, b""))]
            if targets:
                await self._send_changes(group, targets, [change.encode()])
        if session.rotation_due and self._handle in session.log.roster.members:
            await self._rotate(group)

    def _background(self, work: Coroutine[Any, Any, Any], name: str) -> bool:
        """Run ``work`` beside the caller (``settle`` waits for it); False when stopping."""
        task = self._spawn(self._logged(work), name)
        if task is not None:
            self._work.add(task)
            task.add_done_callback(self._work.discard)
        return task is not None

    @staticmethod
    async def _logged(work: Coroutine[Any, Any, Any]) -> None:
        try:
            await work
        except (MessengerError, RelayError) as exc:  # offline: done at the next change/send
            log.warning("group work not done: %s", exc)

    async def settle(self) -> None:
        """Until the work changes started (forwarding, new sender keys) is done."""
        while self._work:
            await asyncio.gather(*list(self._work), return_exceptions=True)

    async def _on_sender_key(self, peer: str, data: bytes, label: str) -> None:
        try:
            dist = Distribution.decode(data)
        except ProtocolError as exc:
            log.warning("a malformed sender key from %s: %s", peer, exc)
            return
        group_id = dist.record.group_id
        group = self._all().get(group_id) or _Group(group_id)
        async with self._lock(group_id):
            self._all()[group_id] = group
            group.parked_keys = (group.parked_keys + [(peer, data, label)])[-MAX_PARKED:]
            self._apply_parked_keys(group)
            self._save(group, log_changed=False)
        await self._retry_held(group_id)

    def _apply_parked_keys(self, group: _Group) -> None:
        """Records wait for their group's log and their sender's add; then they enter."""
        if group.session is None:
            return
        waiting = []
        for sender, data, label in group.parked_keys:
            if sender not in group.session.log.roster.members:
                if sender in group.session.log.roster.removed:
                    self._refuse(group, "not a member", f"a sender key from {sender}, who is "
                                 "not a member")
                    continue
                waiting.append((sender, data, label))
                continue
            try:
                group.session.receive_distribution(sender, data)
            except ProtocolError as exc:
                log.warning("group %s: sender key from %s refused: %s", group.name, sender, exc)
                continue
            generation = Distribution.decode(data).record.generation
            group.labels[(sender, generation)] = label
        group.parked_keys = waiting

    def _refuse(self, group: _Group, reason: str, detail: str, count: int = 1) -> None:
        group.refused[reason] = group.refused.get(reason, 0) + count
        log.warning("refused: %s", detail)

    # -- receipts ------------------------------------------------------------------------

    def _owe(self, group: _Group, sender: str, state: str, text_id: str) -> None:
        if sender != self._handle:
            group.owed = (group.owed + [(sender, state, text_id)])[-MAX_OWED:]

    def _flush_soon(self) -> None:
        """Send the receipts owed, beside the caller; one flush at a time (what comes in
        while one runs goes with the next: the batching)."""
        if self._flushing:
            self._flush_again = True
            return
        self._flushing = self._background(self._flush_receipts(), "group-receipts")
        # False: stopping, nothing started; the receipts owed go at the next start

    async def _flush_receipts(self) -> None:
        try:
            again = True
            while again:
                self._flush_again = False
                for group in list(self._all().values()):
                    if group.owed and group.session is not None:
                        await self._flush_group(group)
                again = self._flush_again
        finally:
            self._flushing = False

    async def _flush_group(self, group: _Group) -> None:
        """One payload per (sender, state) of this group's owed receipts (a read one
        covering delivery); what was sealed into the pairwise outbox is no longer owed."""
        session = self._session(group)
        owed = list(group.owed)
        done: set[tuple[str, str, str]] = set()
        batches: dict[tuple[str, str], list[str]] = {}
        read = {(s, i) for s, state, i in owed if state == "read"}
        for entry in owed:
            sender, state, text_id = entry
            if (sender not in session.log.roster.members
                    or self._handle not in session.log.roster.members):
                done.add(entry)  # they (or we) are out of the group: nobody to tell
                continue
            if state == "delivered" and (sender, text_id) in read:
                done.add(entry)  # the read receipt says it
                continue
            ids = batches.setdefault((sender, state), [])
            if text_id not in ids:
                ids.append(text_id)
        for (sender, state), ids in batches.items():
            for start in range(0, len(ids), payloads.MAX_RECEIPT_IDS):
                chunk = ids[start:start + payloads.MAX_RECEIPT_IDS]
                try:
                    await self._pairwise.send_pairwise(
                        ConversationId.direct(sender),
                        payloads.group_receipt(group.group_id, state, chunk), wait=False)
                except MessengerError as exc:  # kept: they go with the next flush
                    log.info("group %s: receipts for %s not sent yet: %s", group.name,
                             sender, exc)
                    break
                done.update((sender, state, i) for i in chunk)
        if done:
            async with self._lock(group.group_id):
                group.owed = [e for e in group.owed if e not in done]
                self._save(group, log_changed=False)

    async def _on_receipt(self, peer: str, body: payloads.GroupReceipt) -> None:
        """A member's receipt for our messages: counted per message, or refused and counted
        (from a non-member, for a message we never sent them); never raises."""
        group = self._all().get(body.group)
        if group is None or group.session is None:
            self.stray_receipts += 1
            log.warning("refused: a group receipt from %s for a group you are not in", peer)
            return
        async with self._lock(group.group_id):
            if peer not in group.session.log.roster.members:
                self._refuse(group, "receipt from a non-member",
                             f"a group receipt from {peer}, who is not a member of "
                             f"{group.name}")
                self._save(group, log_changed=False)
                return
            outcome = self._store.record_group_receipts(group.group_id, peer, body.state,
                                                        list(body.ids))
            if outcome.unknown:
                self._refuse(group, "receipt for an unknown message",
                             f"{peer}'s receipt names {outcome.unknown} message(s) you never "
                             f"sent to {group.name}", outcome.unknown)
            if outcome.not_recipient:
                self._refuse(group, "receipt for a message not sent to them",
                             f"{peer}'s receipt names {outcome.not_recipient} message(s) of "
                             f"{group.name} that did not go to them", outcome.not_recipient)
            if outcome.unknown or outcome.not_recipient:
                self._save(group, log_changed=False)
        for receipts in outcome.changed:
            self._emit(GroupReceiptEvent(group.group_id.hex(), receipts.message_id,
                                         _counts(receipts), group.name))

    # -- receiving: group messages -------------------------------------------------------

    async def receive(self, deliver: Deliver) -> None:
        """A group envelope from the relay: opened, committed, acknowledged, shown; or held
        for its sender key; or refused (acknowledged, counted, logged)."""
        wire = deliver.body[1:]
        try:
            header = parse_group_message(wire)[0]
        except ProtocolError as exc:
            log.warning("dropped a group message from %s: %s", deliver.sender, exc)
            await self._relay.ack([deliver.seq])
            return
        group = self._all().get(header.group_id)
        if group is None or group.session is None:
            # From a contact, or from someone whose first message (the one that opens the
            # session) waits in the inbox for its QKD keys: the group's log may still be on
            # the way, so hold it unacknowledged rather than lose it.
            if (self._store.load_session(deliver.sender) is not None
                    or self._pairwise.pairwise_held_from(deliver.sender)):
                self._hold(deliver)
                return
            log.warning("dropped a group message from %s: a group you are not in",
                        deliver.sender)
            await self._relay.ack([deliver.seq])
            return
        self._held.pop(deliver.seq, None)
        await self._drain(group, deliver)

    async def _drain(self, group: _Group, new: Deliver | None = None) -> None:
        """Open the group's held messages and ``new`` in relay order, a sender's later
        messages held behind an earlier one still waiting for its key (so each sender's
        messages are shown in order). All under the lock, without awaiting: commits, and
        the events after them, happen in that order; the acknowledgements follow."""
        acks, shown = [], []
        async with self._lock(group.group_id):
            waiting = [d for d in self._held.values() if _group_of(d) == group.group_id]
            batch = sorted(waiting + ([new] if new is not None else []), key=lambda d: d.seq)
            blocked: set[str] = set()
            for deliver in batch:
                self._held.pop(deliver.seq, None)
                if deliver.sender in blocked:
                    self._hold(deliver)
                    continue
                opened = self._open(group, deliver, _sender_of(deliver))
                if opened is None:
                    blocked.add(deliver.sender)
                    continue
                acks.append(deliver.seq)
                if isinstance(opened, MessageView):
                    shown.append(opened)
        for view in shown:
            self._emit(MessageEvent(view))
        if acks:
            await self._relay.ack(acks)
        if shown:
            self._flush_soon()

    def _open(self, group: _Group, deliver: Deliver, sender: str) -> object:
        """One message under the group's lock: a MessageView, _REFUSED (acknowledge it) or
        None (held for its sender key)."""
        session = self._session(group)
        key = group_key(group.group_id)
        if self._store.seen(key, deliver.msg):
            return _REFUSED  # a redelivery: acknowledged again
        if sender != deliver.sender:
            self._refuse(group, "sender mismatch", f"a group message from {deliver.sender} "
                         f"names {sender} as its sender")
            self._save(group, log_changed=False)
            return _REFUSED
        try:
            sender, plaintext = session.decrypt(deliver.body[1:])
        except UnknownSenderKey:
            if self._handle not in session.log.roster.members:  # a key made after we left
                self._refuse(group, "not a member", f"a group message from {sender} under a "
                             "key made after you left the group")
                self._save(group, log_changed=False)
                return _REFUSED
            self._hold(deliver)
            return None
        except ProtocolError as exc:
            log.warning("group %s: refused a message from %s: %s", group.name,
                        deliver.sender, exc)
            self._save(group, log_changed=False)
            return _REFUSED
        generation = parse_group_message(deliver.body[1:])[0].generation
        label = f"{SENDER_KEY_LABEL} via {group.labels.get((sender, generation), '?')}"
        try:
            body = payloads.decode(plaintext)
        except payloads.PayloadError as exc:
            log.warning("group %s: undecodable message from %s: %s", group.name, sender, exc)
            body = None
        owes = isinstance(body, payloads.Text) and sender in session.log.roster.members
        if owes and body is not None:  # committed with the message: sent even after a stop
            self._owe(group, sender, "delivered", body.id)
        if not self._store.commit_group_incoming(group.group_id, group.keys_state(),
                                                 deliver.msg, sender, plaintext, label):
            if owes:
                group.owed.pop()
            return _REFUSED
        if not isinstance(body, payloads.Text):
            return _REFUSED
        return MessageView(body.id, sender, False, body.text, body.ts, Delivery.RECEIVED,
                           label, "group", group.group_id.hex(), group.name)

    def _hold(self, deliver: Deliver) -> None:
        if len(self._held) < MAX_HELD or deliver.seq in self._held:
            self._held[deliver.seq] = deliver
        log.info("group message from %s held: its sender key has not come yet",
                 deliver.sender)

    async def _retry_held(self, group_id: bytes) -> None:
        group = self._all().get(group_id)
        if group is not None and group.session is not None:
            await self._drain(group)


def _group_of(deliver: Deliver) -> bytes:
    return deliver.body[2:2 + 16]  # envelope byte, version byte, then the group ID


def _sender_of(deliver: Deliver) -> str:
    return parse_group_message(deliver.body[1:])[0].sender


_REFUSED = object()


def _counts(receipts: GroupReceipts) -> GroupCounts:
    return GroupCounts(len(receipts.delivered), len(receipts.read), len(receipts.recipients))


def _delivery(counts: GroupCounts | None) -> Delivery:
    """Our group message's state: read or delivered once every recipient said so."""
    if counts is None or not counts.recipients:
        return Delivery.SENT
    if counts.read == counts.recipients:
        return Delivery.READ
    return Delivery.DELIVERED if counts.delivered == counts.recipients else Delivery.SENT


def _now_ms() -> int:
    return int(time.time() * 1000)


def _joined_by(group_log: GroupLog) -> dict[str, bytes]:
    """Each member's latest create/add (the change an author must have seen to know them)."""
    joined: dict[str, bytes] = {}
    for change in group_log.order():
        for handle, _ in change.members:
            joined[handle] = change.id
    return joined


def _describe(change: Change, me: str) -> str:
    def who(handles: tuple[str, ...]) -> str:
        return ", ".join("you" if h == me else h for h in handles)

    joined = tuple(h for h, _ in change.members)
    if change.op is Op.CREATE:
        return f"{change.author} created {change.name} with {who(joined[1:])}"
    if change.op is Op.ADD:
        return f"{change.author} added {who(joined)}"
    if change.op is Op.REMOVE:
        return f"{change.author} removed {who(change.targets)}"
    if change.op is Op.LEAVE:
        return f"{change.author} left"
    if change.op is Op.RENAME:
        return f"{change.author} renamed the group {change.name}"
    if change.op is Op.PROMOTE:
        return f"{change.author} made {who(change.targets)} admin"
    return f"{change.author} no longer made {who(change.targets)} admin"
