"""Control messages of a transfer: acks, resume points, completion and cancel.

Two paths:

* **Sealed control frames** ride beside the chunks as binary frames. They are sealed with
  AES-256-GCM under a per-direction control key (see ``keys``) with a random 96-bit nonce;
  the header is the associated data. Each carries a sequence number that only grows (persisted
  across restarts), so a replayed or stale control message is ignored.

      0   4  magic b"QSXF"      4  1 version (1)     5  1 kind (2 = control)
      6  16  transfer ID        22 1 direction (0 = sender->receiver, 1 = receiver->sender)
      23 12  nonce              35 .. ciphertext || tag of a canonical CBOR map

* **Offer / decline / cancel-before-accept** travel inside end-to-end encrypted messages of
  the protocol layer (the receiver has no transfer keys before it accepts and fetches the QKD
  keys). ``encode_offer`` etc. give their canonical CBOR payloads.

CBOR maps (key ``t`` is the type). Files go in order, so one position says it all: every
file before ``f`` is verified and landed, and chunks ``0..n-1`` of file ``f`` are on disk
(``f`` = number of files means complete):
  ``{"t": "resume", "s": seq, "f": file, "n": chunk}``   r->s  send from here (accept, restart,
                                                         gap, tampered chunk, failed hash)
  ``{"t": "ack", "s": seq, "f": file, "n": chunk}``      r->s  cumulative, after persisting
  ``{"t": "cancel", "s": seq, "reason": text}``          both
  ``{"t": "uploaded", "s": seq, "n": chunks}``           s->r  a group file's upload is over
                                                         (all ``n`` chunks sent): a receiver
                                                         still missing some fails (truncated)

A **group file** is offered with ``transfer-group-offer`` (the manifest plus the group's ID
and name), sent to each member through the pairwise session; its chunks are uploaded once
on a group file stream and spooled by the relay for every member. Nothing goes back to the
sender on the stream: the receiver's acks and resume points stay local.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag

from keysource.pq import aes256gcm

from .errors import MalformedFrame, ManifestError, TamperedChunk
from .keys import RECEIVER_TO_SENDER, SENDER_TO_RECEIVER, TransferKeys
from .manifest import TRANSFER_ID_BYTES, Manifest
from .stream import FRAME_VERSION, KIND_CONTROL, MAGIC

_HEADER = struct.Struct(">4sBB16sB12s")
HEADER_BYTES = _HEADER.size  # 35
MAX_CONTROL_BYTES = 1 << 20
MAX_REASON_CHARS = 500
GROUP_ID_BYTES = 16
_DIRECTIONS = {SENDER_TO_RECEIVER: 0, RECEIVER_TO_SENDER: 1}


@dataclass(frozen=True)
class Control:
    """A decoded control message."""

    type: str
    seq: int
    body: dict[str, Any]


def seal_control(keys: TransferKeys, direction: str, seq: int, type_: str,
                 **fields: Any) -> bytes:
    """Seal one control message for ``direction`` (``"s2r"`` or ``"r2s"``)."""
    plaintext = cbor2.dumps({"t": type_, "s": seq, **fields}, canonical=True)
    nonce = os.urandom(12)
    header = _HEADER.pack(MAGIC, FRAME_VERSION, KIND_CONTROL, keys.manifest.transfer_id,
                          _DIRECTIONS[direction], nonce)
    return header + aes256gcm(keys.control_key(direction)).encrypt(nonce, plaintext, header)


def open_control(keys: TransferKeys, direction: str,
                 frame: bytes | bytearray | memoryview) -> Control:
    """Authenticate and decode a control frame that should travel in ``direction``."""
    data = bytes(frame)
    if len(data) > MAX_CONTROL_BYTES:
        raise MalformedFrame("control frame too large")
    if len(data) < HEADER_BYTES + 16:
        raise MalformedFrame("control frame shorter than its header")
    magic, version, kind, tid, dir_byte, nonce = _HEADER.unpack_from(data, 0)
    if magic != MAGIC or version != FRAME_VERSION or kind != KIND_CONTROL:
        raise MalformedFrame("not a transfer control frame of a supported version")
    if tid != keys.manifest.transfer_id:
        raise MalformedFrame("control frame belongs to another transfer")
    if dir_byte != _DIRECTIONS[direction]:
        raise TamperedChunk("control frame travels in the wrong direction (reflected?)")
    try:
        plaintext = aes256gcm(keys.control_key(direction)).decrypt(
            nonce, data[HEADER_BYTES:], data[:HEADER_BYTES])
    except InvalidTag:
        raise TamperedChunk("control frame failed authentication") from None
    try:
        body = cbor2.loads(plaintext)
    except Exception as exc:  # authentic but malformed: the peer is buggy or hostile
        raise MalformedFrame(f"control message is not valid CBOR: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("t"), str):
        raise MalformedFrame("control message without a type")
    seq = body.get("s")
    if not isinstance(seq, int) or seq < 0:
        raise MalformedFrame("control message without a sequence number")
    return Control(body["t"], seq, body)


def clip_reason(reason: str) -> str:
    return str(reason)[:MAX_REASON_CHARS]


# ------------------------------------------------- payloads for the E2EE message channel


def encode_offer(manifest: Manifest) -> bytes:
    """The E2EE message payload that offers a transfer (manifest bytes inside)."""
    return cbor2.dumps({"t": "transfer-offer", "manifest": manifest.encode()}, canonical=True)


def encode_group_offer(manifest: Manifest, group_id: bytes, group_name: str) -> bytes:
    """The E2EE payload that offers a group file: the manifest and the group it is for."""
    return cbor2.dumps({"t": "transfer-group-offer", "manifest": manifest.encode(),
                        "group": group_id, "name": group_name}, canonical=True)


def encode_decline(transfer_id: bytes, reason: str = "declined") -> bytes:
    return cbor2.dumps({"t": "transfer-decline", "id": transfer_id,
                        "reason": clip_reason(reason)}, canonical=True)


def encode_cancel(transfer_id: bytes, reason: str = "cancelled") -> bytes:
    return cbor2.dumps({"t": "transfer-cancel", "id": transfer_id,
                        "reason": clip_reason(reason)}, canonical=True)


@dataclass(frozen=True)
class TransferMessage:
    """A decoded E2EE transfer payload: an offer (with manifest) or a decline/cancel."""

    type: str
    transfer_id: bytes
    manifest: Manifest | None = None
    reason: str = ""
    group: bytes = b""  # a group offer: the group's ID
    group_name: str = ""


def decode_message(payload: bytes) -> TransferMessage:
    """Decode an E2EE transfer payload; raise ManifestError with the reason if bad."""
    try:
        body = cbor2.loads(payload)
    except Exception as exc:  # cbor2 raises several types for malformed input
        raise ManifestError(f"transfer message is not valid CBOR: {exc}") from None
    if not isinstance(body, dict):
        raise ManifestError("transfer message must be a CBOR map")
    kind = body.get("t")
    if kind == "transfer-offer":
        manifest = Manifest.decode(body.get("manifest", b""))
        return TransferMessage(kind, manifest.transfer_id, manifest)
    if kind == "transfer-group-offer":
        manifest = Manifest.decode(body.get("manifest", b""))
        group, name = body.get("group"), body.get("name", "")
        if not isinstance(group, bytes) or len(group) != GROUP_ID_BYTES:
            raise ManifestError("group file offer with a bad group ID")
        if not isinstance(name, str) or len(name) > MAX_REASON_CHARS:
            raise ManifestError("group file offer with a bad group name")
        return TransferMessage(kind, manifest.transfer_id, manifest, group=group,
                               group_name=name)
    if kind in ("transfer-decline", "transfer-cancel"):
        tid, reason = body.get("id"), body.get("reason", "")
        if not isinstance(tid, bytes) or len(tid) != TRANSFER_ID_BYTES:
            raise ManifestError("transfer message with a bad transfer ID")
        return TransferMessage(kind, tid, None, clip_reason(reason))
    raise ManifestError(f"unknown transfer message type {kind!r}")
