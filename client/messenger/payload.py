"""What travels inside an end-to-end encrypted message (the plaintext of the ratchet).

A small versioned CBOR map, so texts, receipts, file-transfer messages and call
signalling share one envelope: ``{"v": 1, "t": kind, "id": ..., "ts": ..., ...}``. Each
kind is its own small type; :func:`decode` checks the fields of exactly that kind.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar

import cbor2

VERSION = 1
MAX_TEXT_CHARS = 16_000
MAX_TRANSFER_BYTES = 1 << 20  # a manifest of many thousands of files still fits
TRANSFER_SECRET_BYTES = 32
CALL_SECRET_BYTES = 32
MAX_CALL_BYTES = 8192  # a call message (client.call.signalling) is at most ~1.3 KiB
RECEIPT_STATES = ("delivered", "read")


class PayloadError(ValueError):
    """A decrypted payload is not one this version understands."""


def _new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, repr=False)
class _Envelope:
    """The fields every kind shares; each kind's ``encode`` adds its own through ``_encode``."""

    kind: ClassVar[str]
    id: str
    ts: float

    def _encode(self, fields: dict[str, Any]) -> bytes:
        return cbor2.dumps({"v": VERSION, "t": self.kind, "id": self.id, "ts": self.ts,
                            **fields})

    def __repr__(self) -> str:  # never print message text or secrets
        return f"{type(self).__name__}(id={self.id!r})"


@dataclass(frozen=True, repr=False)
class Text(_Envelope):
    """A chat message."""

    kind: ClassVar[str] = "text"
    text: str = ""

    def encode(self) -> bytes:
        return self._encode({"text": self.text})


@dataclass(frozen=True, repr=False)
class Receipt(_Envelope):
    """The peer's device got (``delivered``) or showed (``read``) these text ids."""

    kind: ClassVar[str] = "receipt"
    state: str = "delivered"
    ids: tuple[str, ...] = ()

    def encode(self) -> bytes:
        return self._encode({"state": self.state, "ids": list(self.ids)})


@dataclass(frozen=True, repr=False)
class TransferMessage(_Envelope):
    """A file-transfer offer, decline or cancel (client.transfer.control); an offer also
    carries the session transfer secret, which never leaves the E2EE box."""

    kind: ClassVar[str] = "transfer"
    data: bytes = b""
    secret: bytes = b""

    def encode(self) -> bytes:
        return self._encode({"data": self.data,
                             **({"secret": self.secret} if self.secret else {})})


@dataclass(frozen=True, repr=False)
class CallPayload(_Envelope):
    """A call signalling message (client.call.signalling.CallMessage, encoded); an offer also
    carries the call's session secret, which never leaves the E2EE box."""

    kind: ClassVar[str] = "call"
    data: bytes = b""
    secret: bytes = b""

    def encode(self) -> bytes:
        return self._encode({"data": self.data,
                             **({"secret": self.secret} if self.secret else {})})


@dataclass(frozen=True, repr=False)
class GroupChanges(_Envelope):
    """Signed membership changes of one group (client.group.roster.Change, encoded): a new
    change for every member, or a group's whole log for a member just added."""

    kind: ClassVar[str] = "group_changes"
    group: bytes = b""
    changes: tuple[bytes, ...] = ()

    def encode(self) -> bytes:
        return self._encode({"group": self.group, "changes": list(self.changes)})


@dataclass(frozen=True, repr=False)
class SenderKey(_Envelope):
    """A member's sender-key record for a group (client.group.session.Distribution,
    encoded): rides on the pairwise session's keys, never kept in the history."""

    kind: ClassVar[str] = "sender_key"
    data: bytes = b""

    def encode(self) -> bytes:
        return self._encode({"data": self.data})


@dataclass(frozen=True, repr=False)
class GroupReceipt(_Envelope):
    """A member's device got (``delivered``) or showed (``read``) these group texts, sent
    to their sender only, through the pairwise session (many ids in one: a batch)."""

    kind: ClassVar[str] = "group_receipt"
    group: bytes = b""
    state: str = "delivered"
    ids: tuple[str, ...] = ()

    def encode(self) -> bytes:
        return self._encode({"group": self.group, "state": self.state, "ids": list(self.ids)})


Payload = Text | Receipt | TransferMessage | CallPayload | GroupChanges | SenderKey | GroupReceipt
GroupPayload = GroupChanges | SenderKey | GroupReceipt
KINDS = (Text.kind, Receipt.kind, TransferMessage.kind, CallPayload.kind, GroupChanges.kind,
         SenderKey.kind, GroupReceipt.kind)
GROUP_ID_BYTES = 16
MAX_RECEIPT_IDS = 512  # ids in one group receipt (32 hex characters each): ~17 KiB
MAX_ID_CHARS = 64
# A relay envelope is at most 64 KiB: the changes of one payload stay well under it.
MAX_GROUP_CHANGES_BYTES = 48_000
MAX_SENDER_KEY_BYTES = 512


def text(message: str) -> Text:
    if len(message) > MAX_TEXT_CHARS:
        raise PayloadError(f"message is {len(message)} characters; the limit is {MAX_TEXT_CHARS}")
    return Text(_new_id(), time.time(), text=message)


def receipt(state: str, ids: list[str]) -> Receipt:
    if state not in RECEIPT_STATES:
        raise PayloadError(f"unknown receipt state {state!r}")
    return Receipt(_new_id(), time.time(), state=state, ids=tuple(ids))


def transfer(data: bytes, secret: bytes = b"") -> TransferMessage:
    """A file-transfer message; ``secret`` only with an offer."""
    if len(data) > MAX_TRANSFER_BYTES:
        raise PayloadError(f"transfer message is {len(data)} bytes; the limit is "
                           f"{MAX_TRANSFER_BYTES}")
    return TransferMessage(_new_id(), time.time(), data=data, secret=secret)


def call(data: bytes, secret: bytes = b"") -> CallPayload:
    """A call signalling message; ``secret`` only with an offer."""
    if len(data) > MAX_CALL_BYTES:
        raise PayloadError(f"call message is {len(data)} bytes; the limit is {MAX_CALL_BYTES}")
    return CallPayload(_new_id(), time.time(), data=data, secret=secret)


def group_changes(group: bytes, changes: list[bytes]) -> GroupChanges:
    if len(group) != GROUP_ID_BYTES:
        raise PayloadError("a group ID is 16 bytes")
    if sum(map(len, changes)) > MAX_GROUP_CHANGES_BYTES:
        raise PayloadError(f"group changes over {MAX_GROUP_CHANGES_BYTES} bytes in one payload")
    return GroupChanges(_new_id(), time.time(), group=group, changes=tuple(changes))


def sender_key(data: bytes) -> SenderKey:
    if len(data) > MAX_SENDER_KEY_BYTES:
        raise PayloadError(f"sender key record over {MAX_SENDER_KEY_BYTES} bytes")
    return SenderKey(_new_id(), time.time(), data=data)


def group_receipt(group: bytes, state: str, ids: list[str]) -> GroupReceipt:
    if len(group) != GROUP_ID_BYTES:
        raise PayloadError("a group ID is 16 bytes")
    if state not in RECEIPT_STATES:
        raise PayloadError(f"unknown receipt state {state!r}")
    if not ids or len(ids) > MAX_RECEIPT_IDS:
        raise PayloadError(f"a group receipt names 1 to {MAX_RECEIPT_IDS} messages")
    return GroupReceipt(_new_id(), time.time(), group=group, state=state, ids=tuple(ids))


def decode(data: bytes) -> Payload:
    try:
        body = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types on bad input
        raise PayloadError(f"payload does not decode: {type(exc).__name__}") from None
    if not isinstance(body, dict) or body.get("v") != VERSION:
        raise PayloadError("payload version is not supported")
    kind, pid, ts = body.get("t"), body.get("id"), body.get("ts")
    if kind not in KINDS or not isinstance(pid, str) or not isinstance(ts, int | float):
        raise PayloadError("payload lacks a valid kind, id or timestamp")
    if kind == Text.kind:
        return _decode_text(body, pid, float(ts))
    if kind == TransferMessage.kind:
        return _decode_transfer(body, pid, float(ts))
    if kind == CallPayload.kind:
        return _decode_call(body, pid, float(ts))
    if kind == GroupChanges.kind:
        return _decode_group_changes(body, pid, float(ts))
    if kind == SenderKey.kind:
        blob = body.get("data")
        if not isinstance(blob, bytes) or len(blob) > MAX_SENDER_KEY_BYTES:
            raise PayloadError("sender key payload has no valid data")
        return SenderKey(pid, float(ts), data=blob)
    if kind == GroupReceipt.kind:
        return _decode_group_receipt(body, pid, float(ts))
    return _decode_receipt(body, pid, float(ts))


def _decode_text(body: dict[Any, Any], pid: str, ts: float) -> Text:
    message = body.get("text")
    if not isinstance(message, str) or len(message) > MAX_TEXT_CHARS:
        raise PayloadError("text payload has no valid text")
    return Text(pid, ts, text=message)


def _decode_transfer(body: dict[Any, Any], pid: str, ts: float) -> TransferMessage:
    blob, secret = body.get("data"), body.get("secret", b"")
    if not isinstance(blob, bytes) or len(blob) > MAX_TRANSFER_BYTES:
        raise PayloadError("transfer payload has no valid data")
    if not isinstance(secret, bytes) or len(secret) not in (0, TRANSFER_SECRET_BYTES):
        raise PayloadError("transfer payload has a malformed secret")
    return TransferMessage(pid, ts, data=blob, secret=secret)


def _decode_call(body: dict[Any, Any], pid: str, ts: float) -> CallPayload:
    blob, secret = body.get("data"), body.get("secret", b"")
    if not isinstance(blob, bytes) or len(blob) > MAX_CALL_BYTES:
        raise PayloadError("call payload has no valid data")
    if not isinstance(secret, bytes) or len(secret) not in (0, CALL_SECRET_BYTES):
        raise PayloadError("call payload has a malformed secret")
    return CallPayload(pid, ts, data=blob, secret=secret)


def _decode_receipt(body: dict[Any, Any], pid: str, ts: float) -> Receipt:
    state, ids = body.get("state"), body.get("ids")
    if state not in RECEIPT_STATES or not isinstance(ids, list) or not all(
        isinstance(i, str) for i in ids
    ):
        raise PayloadError("receipt payload is malformed")
    return Receipt(pid, ts, state=state, ids=tuple(ids))


def _decode_group_changes(body: dict[Any, Any], pid: str, ts: float) -> GroupChanges:
    group, changes = body.get("group"), body.get("changes")
    if not isinstance(group, bytes) or len(group) != GROUP_ID_BYTES:
        raise PayloadError("group changes payload has no valid group ID")
    if not isinstance(changes, list) or not changes or not all(
            isinstance(c, bytes) for c in changes) or sum(map(len, changes)) > \
            MAX_GROUP_CHANGES_BYTES:
        raise PayloadError("group changes payload has no valid changes")
    return GroupChanges(pid, ts, group=group, changes=tuple(changes))


def _decode_group_receipt(body: dict[Any, Any], pid: str, ts: float) -> GroupReceipt:
    group, state, ids = body.get("group"), body.get("state"), body.get("ids")
    if not isinstance(group, bytes) or len(group) != GROUP_ID_BYTES:
        raise PayloadError("group receipt has no valid group ID")
    if state not in RECEIPT_STATES or not isinstance(ids, list) or not \
            0 < len(ids) <= MAX_RECEIPT_IDS or not all(
                isinstance(i, str) and 0 < len(i) <= MAX_ID_CHARS for i in ids):
        raise PayloadError("group receipt payload is malformed")
    return GroupReceipt(pid, ts, group=group, state=state, ids=tuple(ids))
