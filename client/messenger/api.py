"""What the user interfaces see of the messenger: plain views and events.

The TUI and the CLI depend on this module only, so they can be tested against the
real service and never reach into protocol or network code themselves.

Everything a conversation owns (history, unread counts, delivery states, transfers) is keyed
by a :class:`ConversationId`; the views keep their ``peer`` field (a direct conversation's
key) so callers that speak in handles keep working.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class Delivery(enum.Enum):
    """Where an outgoing message is; incoming messages are RECEIVED."""

    PENDING = "pending"  # sealed and stored, not yet acknowledged by the relay
    SENT = "sent"  # durable at the relay
    DELIVERED = "delivered"  # the peer's device acknowledged it
    READ = "read"  # the peer opened the conversation
    FAILED = "failed"
    RECEIVED = "received"


class ConversationKind(enum.Enum):
    """What a conversation is: DIRECT and GROUP exist (a group's key is its ID, hex)."""

    DIRECT = "direct"
    GROUP = "group"
    CALL = "call"


@dataclass(frozen=True, order=True)
class ConversationId:
    """What history, unread counts, locks, the store and the UI are keyed on.

    A direct conversation's key is the peer's handle, so the store's per-peer tables are
    its tables; a group or a call will carry its own key under its own kind.
    """

    kind: ConversationKind
    key: str

    @classmethod
    def direct(cls, peer: str) -> ConversationId:
        return cls(ConversationKind.DIRECT, peer)

    @property
    def peer(self) -> str:
        """The other party of a direct conversation (the store's key for it)."""
        if self.kind is not ConversationKind.DIRECT:
            raise ValueError(f"a {self.kind.value} conversation has no single peer")
        return self.key

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.key}"


class Connection(enum.Enum):
    CONNECTING = "connecting"
    ONLINE = "online"
    OFFLINE = "offline"  # retrying with backoff


@dataclass(frozen=True)
class GroupCounts:
    """How many of the members one of our group messages went to got it and read it."""

    delivered: int
    read: int
    recipients: int

    def describe(self) -> str:
        """E.g. "✓ 3/4 delivered · 2/4 read" (read ones count as delivered too)."""
        return (f"✓ {self.delivered}/{self.recipients} delivered · "
                f"{self.read}/{self.recipients} read")


@dataclass(frozen=True)
class MessageView:
    message_id: str
    peer: str
    outgoing: bool
    text: str
    timestamp: float
    delivery: Delivery
    sources: str  # e.g. "QKD+ML-KEM-768+X25519", or a degraded label
    mode: str = "ratchet"  # or "otp"; "group" for a group message (sender key)
    group_id: str = ""  # a group message: the group's ID (hex); ``peer`` is its sender
    group: str = ""  # ... and the group's name
    receipts: GroupCounts | None = None  # our own group message: who got and read it

    @property
    def conversation(self) -> ConversationId:
        if self.group_id:
            return ConversationId(ConversationKind.GROUP, self.group_id)
        return ConversationId.direct(self.peer)


@dataclass(frozen=True)
class ContactView:
    handle: str
    unread: int = 0
    verified: bool = False
    online: bool | None = None  # None: unknown
    last_text: str = ""
    last_at: float = 0.0

    @property
    def conversation(self) -> ConversationId:
        return ConversationId.direct(self.handle)


@dataclass(frozen=True)
class GroupChangeView:
    """One membership change as every member folded it (``effect`` "" when it took effect,
    else why not: it lost a race with another admin's change)."""

    change_id: str  # hex
    op: str  # create, add, remove, leave, rename, promote, demote
    author: str
    handles: tuple[str, ...]  # who joined (create/add) or whom it concerned
    name: str
    at: float  # the author's clock (shown, never trusted)
    effect: str = ""


@dataclass(frozen=True)
class GroupView:
    """A group as this member sees it (the roster every member folds to the same)."""

    group_id: str  # hex
    name: str
    members: tuple[str, ...]  # in the order they joined
    admins: tuple[str, ...]
    status: str  # "member", "removed" (by an admin) or "left"
    removed_by: str = ""  # the admin who removed this member
    changes: tuple[GroupChangeView, ...] = ()
    refused: dict[str, int] = field(default_factory=dict)  # refusal reason -> count
    sender_key_generation: int = 0  # this member's current sender key

    @property
    def conversation(self) -> ConversationId:
        return ConversationId(ConversationKind.GROUP, self.group_id)


@dataclass(frozen=True)
class KeyPath:
    """The KMEs the last QKD keys of a conversation went through, as the KME said
    (ETSI 014 ``key_extension``): from the SAE that asked for them to the other."""

    sender: str  # handle whose KME handed the keys out first (enc_keys)
    receiver: str
    nodes: tuple[str, ...]  # the sender's KME first, the receiver's last

    @property
    def hops(self) -> int:
        return len(self.nodes) - 1

    @property
    def trusted(self) -> tuple[str, ...]:
        """The trusted nodes that relayed the keys (they saw them)."""
        return self.nodes[1:-1]

    def steps(self) -> list[str]:
        """``alice@hf-5``, ``hf-1``, ..., ``bob@hf-7``: who and where, in order."""
        return [f"{self.sender}@{self.nodes[0]}", *self.trusted,
                f"{self.receiver}@{self.nodes[-1]}"]

    def summary(self) -> str:
        if self.hops == 0:
            return "same node"
        if self.hops == 1:
            return "direct link"
        return f"{self.hops} hops; trusted: {', '.join(self.trusted)}"

    def describe(self) -> str:
        """``alice@hf-1 → hf-3 → bob@hf-5  (2 hops; trusted: hf-3)``."""
        return f"{' → '.join(self.steps())}  ({self.summary()})"


@dataclass(frozen=True)
class KeyStatus:
    """The key panel: where keys come from right now."""

    pool_keys: int | None = None  # keys available to this SAE at its KME
    pool_max: int | None = None
    key_rate: float | None = None  # keys per second
    qber: float | None = None
    qber_threshold: float = 0.11
    link_alarm: str | None = None  # e.g. "QBER 24.8% above 11%: link aborted (eavesdropper?)"
    sources: str = ""  # sources of the current epoch of the open conversation
    degraded: bool = False
    mode: str = "ratchet"
    algorithms: tuple[str, ...] = field(default_factory=tuple)
    kme: str = ""
    key_path: KeyPath | None = None  # the path of the last QKD keys sent to the peer
    key_path_back: KeyPath | None = None  # ... and of the last ones the peer sent


@dataclass(frozen=True)
class SafetyNumber:
    digits: str  # groups of five digits separated by spaces
    qr_text: str  # a terminal rendering of the QR code


class Event:
    """Base class of what the service reports to the UI."""


@dataclass(frozen=True)
class MessageEvent(Event):
    message: MessageView


@dataclass(frozen=True)
class GroupEvent(Event):
    """A group's membership changed (or this member joined, or was removed): ``note`` says
    what happened in one line, e.g. "alice removed carol"."""

    group: GroupView
    note: str
    refused: bool = False  # a change refused (forged, unauthorised): ``note`` says why


@dataclass(frozen=True)
class GroupReceiptEvent(Event):
    """Members' receipts moved the counts of one of our group messages."""

    group_id: str  # hex
    message_id: str  # the text's payload ID (MessageView.message_id)
    counts: GroupCounts
    group: str = ""  # the group's name

    @property
    def conversation(self) -> ConversationId:
        return ConversationId(ConversationKind.GROUP, self.group_id)


@dataclass(frozen=True)
class DeliveryEvent(Event):
    message_id: str
    peer: str
    delivery: Delivery

    @property
    def conversation(self) -> ConversationId:
        return ConversationId.direct(self.peer)


@dataclass(frozen=True)
class ConnectionEvent(Event):
    state: Connection
    detail: str = ""
    retry_in: float | None = None


@dataclass(frozen=True)
class KeyStatusEvent(Event):
    status: KeyStatus


@dataclass(frozen=True)
class ContactEvent(Event):
    contact: ContactView


class TransferState(enum.Enum):
    """Where a file transfer is, for either side."""

    OFFERED = "offered"  # sender: waiting for the peer to accept; receiver: waiting for you
    SENDING = "sending"  # chunks moving (sender) or arriving (receiver)
    WAITING = "waiting"  # paused: the peer or the relay is away; resumes by itself
    COMPLETE = "complete"  # every file verified (SHA-256) and landed
    DECLINED = "declined"
    CANCELLED = "cancelled"
    FAILED = "failed"  # e.g. the relay's spool for the peer is full; ``detail`` says why

    @property
    def finished(self) -> bool:
        return self in (TransferState.COMPLETE, TransferState.DECLINED,
                        TransferState.CANCELLED, TransferState.FAILED)


@dataclass(frozen=True)
class TransferView:
    """One file transfer as the UIs show it (a progress bar with rate and ETA)."""

    transfer_id: str  # hex
    peer: str
    outgoing: bool
    names: tuple[str, ...]  # top-level names the sender chose (files or folders)
    files: int
    total_bytes: int
    done_bytes: int
    state: TransferState
    rate_bytes_per_s: float = 0.0
    eta_seconds: float | None = None
    detail: str = ""  # the reason of a decline / cancel / failure, or where files landed
    started_at: float = 0.0
    paths: tuple[str, ...] = ()  # receiver: where the files landed
    group: str = ""  # a group file: the group's name (``peer`` is "@name" when sending)
    group_id: str = ""  # a group file: the group's ID (hex)

    @property
    def conversation(self) -> ConversationId:
        if self.group_id:
            return ConversationId(ConversationKind.GROUP, self.group_id)
        return ConversationId.direct(self.peer)

    @property
    def fraction(self) -> float:
        return 1.0 if self.total_bytes == 0 else min(1.0, self.done_bytes / self.total_bytes)

    @property
    def title(self) -> str:
        first = self.names[0] if self.names else "(nothing)"
        more = len(self.names) - 1
        return first if more <= 0 else f"{first} (+{more} more)"


@dataclass(frozen=True)
class TransferEvent(Event):
    """A transfer appeared or changed (offered, accepted, progressed, ended)."""

    transfer: TransferView


class CallState(enum.Enum):
    """Where a call is, for either side."""

    CALLING = "calling"  # offer sent, the peer's device not ringing yet
    RINGING = "ringing"  # ringing there (caller) or here (callee)
    ACTIVE = "active"
    ENDED = "ended"


@dataclass(frozen=True)
class CallView:
    """A call as the UIs see it; ``stats`` holds the live figures (frames, loss, jitter)."""

    call_id: str  # hex
    peer: str
    outgoing: bool
    state: CallState
    sources: str = ""  # e.g. "QKD+ML-KEM-768+X25519", or a degraded label
    reason: str = ""  # why it ended: hung up, declined, busy, missed, offline, ...
    ended_by_peer: bool = False
    started_at: float = 0.0  # wall clock of the offer
    answered_at: float | None = None
    rekeys: int = 0
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def conversation(self) -> ConversationId:
        return ConversationId.direct(self.peer)


@dataclass(frozen=True)
class CallEvent(Event):
    """A call appeared or changed (offered, ringing, answered, rekeyed, ended)."""

    call: CallView


class MessengerError(Exception):
    """A failure the user can act on; the message says what to do.

    ``code`` and ``reason`` are set when the relay refused something (its error code, e.g.
    ``too_large``, and its own words), so a UI can show both and a CLI exit non-zero.
    """

    def __init__(self, message: str, *, code: str | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class ErrorEvent(Event):
    """Something failed in the background (e.g. the relay refused the prekey upload at
    login): the TUI shows a line; the CLI gets the same error from ``wait_online``."""

    error: MessengerError


class Messenger(Protocol):
    """The operations the UIs need. Network calls are async; views are cheap reads."""

    handle: str

    @property
    def stopped(self) -> bool:
        """True once ``stop`` began: no more events, and reads raise MessengerError."""
        ...

    def subscribe(self, callback: Callable[[Event], None]) -> None: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def caught_up(self, stall_timeout: float = 30.0) -> None: ...
    def contacts(self) -> list[ContactView]: ...
    def history(self, peer: str, limit: int = 500) -> list[MessageView]: ...
    async def add_contact(self, handle: str) -> ContactView: ...
    async def send(self, peer: str, text: str) -> MessageView: ...
    async def mark_read(self, peer: str) -> None: ...
    def safety_number(self, peer: str) -> SafetyNumber: ...
    async def set_verified(self, peer: str, verified: bool) -> None: ...
    def key_status(self, peer: str | None = None) -> KeyStatus: ...
    async def set_mode(self, peer: str, mode: str) -> None: ...
    def search(self, query: str) -> list[MessageView]: ...
    def export(self, peer: str, fmt: str) -> str: ...
    def transfers(self) -> list[TransferView]: ...
    # ``peer`` "@GROUP" (a group's name or ID): a group file, uploaded once for every member.
    async def send_files(self, peer: str, paths: list[str]) -> TransferView: ...
    async def accept_transfer(self, transfer_id: str) -> TransferView: ...
    async def decline_transfer(self, transfer_id: str, reason: str = "declined") -> None: ...
    async def cancel_transfer(self, transfer_id: str) -> None: ...
    # Calls: ``source``/``sink`` are client.call.audio sources and sinks (a call's sound);
    # CallEvent reports every change, ``calls.view(call_id)`` the live statistics.
    async def place_call(self, peer: str, source: Any, sink: Any) -> CallView: ...
    async def answer_call(self, call_id: str | None, source: Any, sink: Any) -> CallView: ...
    async def decline_call(self, call_id: str | None, busy: bool = False) -> None: ...
    async def hang_up(self, call_id: str | None = None) -> CallView: ...
    async def rekey_call(self, call_id: str | None = None) -> CallView: ...
    def call_view(self, call_id: str) -> CallView: ...
    def live_call(self) -> CallView | None: ...
    # Groups: GROUP is a name or the start of an ID; GroupEvent reports every change,
    # MessageEvent a group message (MessageView.group_id set, ``peer`` its sender).
    async def create_group(self, name: str, members: list[str]) -> GroupView: ...
    async def add_to_group(self, group: str, members: list[str]) -> GroupView: ...
    async def remove_from_group(self, group: str, members: list[str]) -> GroupView: ...
    async def leave_group(self, group: str) -> GroupView: ...
    async def rename_group(self, group: str, name: str) -> GroupView: ...
    async def set_group_admin(self, group: str, members: list[str],
                              admin: bool) -> GroupView: ...
    def group_list(self) -> list[GroupView]: ...
    def group_history(self, group: str, limit: int = 500) -> list[MessageView]: ...
    def group_unread(self) -> dict[str, int]: ...  # group ID -> not shown yet
    def mark_group_shown(self, group: str) -> None: ...
    async def send_group(self, group: str, text: str, *, wait: bool = True) -> MessageView: ...


class ProfileGate(Protocol):
    """Opens the local profile: first-run creation, or unlocking with the passphrase."""

    def profile_exists(self) -> bool: ...
    async def create(self, handle: str, passphrase: str) -> Messenger: ...
    async def unlock(self, passphrase: str) -> Messenger: ...
