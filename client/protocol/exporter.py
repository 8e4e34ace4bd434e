"""Exporters: secrets another protocol derives from one message of a session.

A call (docs/protocol.md §14) needs a secret that binds its keys to the conversation's
current ratchet state, known to both ends, and well-defined although other messages may be
in flight both ways. The message that starts it is such a thing: its key is known to
exactly the sender (who sealed it) and the receiver (who opened it), whatever else the two
ratchets did meanwhile. So every sealed message has a *message secret*::

    message_secret = HKDF-Extract(salt = "qsecret/v1/message-exporter", ikm = K)

with K the message's AES-256-GCM key ``mk`` (ratchet mode: derived from the chain key, so
from the current root, i.e. the last X25519 + ML-KEM-768 + QKD turn), or its one-time
Poly1305 key (one-time-pad mode: 32 QKD pad bytes). K itself is used once and erased as
before; the message secret is handed to the layer above with the sealed or opened message
and never stored. A protocol exports its own key with :func:`export`::

    export(message_secret, label, context) =
        HKDF-Expand(message_secret, info = u16 len(label) || label || u16 len(context)
                    || context, 32)

so different labels (protocols) and contexts (e.g. call ids) give independent keys.
"""

from __future__ import annotations

import hmac
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

MESSAGE_EXPORTER_SALT = b"qsecret/v1/message-exporter"
SECRET_BYTES = 32
_U16 = struct.Struct(">H")


def message_secret(message_key: bytes) -> bytes:
    """The exporter secret of one message, from its one-use key (HKDF-Extract)."""
    if len(message_key) < 32:
        raise ValueError("a message key is at least 32 bytes")
    return hmac.digest(MESSAGE_EXPORTER_SALT, message_key, "sha256")


def export(secret: bytes, label: str, context: bytes, length: int = SECRET_BYTES) -> bytes:
    """A key for ``label`` (which protocol) and ``context`` (e.g. a call id) from a message
    secret (HKDF-Expand)."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"an exporter secret is {SECRET_BYTES} bytes")
    raw = label.encode()
    if not raw or len(raw) > 0xFFFF or len(context) > 0xFFFF:
        raise ValueError("exporter label must be 1..65535 bytes, context at most 65535")
    info = _U16.pack(len(raw)) + raw + _U16.pack(len(context)) + context
    return HKDFExpand(hashes.SHA256(), length, info).derive(secret)


__all__ = ["MESSAGE_EXPORTER_SALT", "SECRET_BYTES", "export", "message_secret"]
