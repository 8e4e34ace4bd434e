"""What travels inside an end-to-end encrypted message (the plaintext of the ratchet).

A small versioned CBOR map, so receipts and later file manifests or call
signalling share one envelope: ``{"v": 1, "t": kind, "id": ..., "ts": ..., ...}``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import cbor2

VERSION = 1
MAX_TEXT_CHARS = 16_000
KINDS = ("text", "receipt", "transfer")
MAX_TRANSFER_BYTES = 1 << 20  # a manifest of many thousands of files still fits
TRANSFER_SECRET_BYTES = 32
RECEIPT_STATES = ("delivered", "read")


class PayloadError(ValueError):
    """A decrypted payload is not one this version understands."""


@dataclass(frozen=True)
class Payload:
    kind: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    ts: float = field(default_factory=time.time)
    text: str = ""
    state: str = ""  # receipts: delivered | read
    ids: tuple[str, ...] = ()  # receipts: which payload ids
    data: bytes = b""  # transfers: an offer / decline / cancel (client.transfer.control)
    secret: bytes = b""  # transfer offers: the session transfer secret for the file keys

    def encode(self) -> bytes:
        body: dict[str, Any] = {"v": VERSION, "t": self.kind, "id": self.id, "ts": self.ts}
        if self.kind == "text":
            body["text"] = self.text
        elif self.kind == "transfer":
            body["data"] = self.data
            if self.secret:
                body["secret"] = self.secret
        else:
            body["state"], body["ids"] = self.state, list(self.ids)
        return cbor2.dumps(body)

    def __repr__(self) -> str:  # never print message text
        return f"Payload({self.kind}, id={self.id!r})"


def text(message: str) -> Payload:
    if len(message) > MAX_TEXT_CHARS:
        raise PayloadError(f"message is {len(message)} characters; the limit is {MAX_TEXT_CHARS}")
    return Payload("text", text=message)


def receipt(state: str, ids: list[str]) -> Payload:
    if state not in RECEIPT_STATES:
        raise PayloadError(f"unknown receipt state {state!r}")
    return Payload("receipt", state=state, ids=tuple(ids))


def transfer(data: bytes, secret: bytes = b"") -> Payload:
    """A file-transfer message; ``secret`` only with an offer (it never leaves the E2EE box)."""
    if len(data) > MAX_TRANSFER_BYTES:
        raise PayloadError(f"transfer message is {len(data)} bytes; the limit is "
                           f"{MAX_TRANSFER_BYTES}")
    return Payload("transfer", data=data, secret=secret)


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
    if kind == "text":
        message = body.get("text")
        if not isinstance(message, str) or len(message) > MAX_TEXT_CHARS:
            raise PayloadError("text payload has no valid text")
        return Payload("text", pid, float(ts), text=message)
    if kind == "transfer":
        blob, secret = body.get("data"), body.get("secret", b"")
        if not isinstance(blob, bytes) or len(blob) > MAX_TRANSFER_BYTES:
            raise PayloadError("transfer payload has no valid data")
        if not isinstance(secret, bytes) or len(secret) not in (0, TRANSFER_SECRET_BYTES):
            raise PayloadError("transfer payload has a malformed secret")
        return Payload("transfer", pid, float(ts), data=blob, secret=secret)
    state, ids = body.get("state"), body.get("ids")
    if state not in RECEIPT_STATES or not isinstance(ids, list) or not all(
        isinstance(i, str) for i in ids
    ):
        raise PayloadError("receipt payload is malformed")
    return Payload("receipt", pid, float(ts), state=state, ids=tuple(ids))
