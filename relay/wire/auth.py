"""The bytes a client signs to log in, and certificate pinning helpers.

Both ends build the same bytes from the same parts, so they agree byte for byte::

    "qsecret/v1/relay-auth\\x00" || lp(nonce) || lp(relay_id) || lp(tls_fingerprint)
                                || lp(handle) || lp(identity_public_key)

``lp`` is a 4-byte big-endian length then the bytes (strings as UTF-8).
``relay_id`` is the id the client expects (pinned on first use, announced in
``hello``); ``tls_fingerprint`` is the SHA-256 of the relay certificate the
client actually saw (32 raw bytes), empty over plain ``ws://``. Binding the
certificate means a man in the middle with another certificate cannot forward
the challenge and log in as the user.
"""

from __future__ import annotations

import hashlib

from .codec import lp

AUTH_DOMAIN = b"qsecret/v1/relay-auth\x00"


def auth_message(
    nonce: bytes, relay_id: str, tls_fingerprint: bytes, handle: str, identity: bytes
) -> bytes:
    """The message to sign with the hybrid identity key (see module docstring)."""
    return (
        AUTH_DOMAIN
        + lp(nonce)
        + lp(relay_id.encode())
        + lp(tls_fingerprint)
        + lp(handle.encode())
        + lp(identity)
    )


def certificate_fingerprint(der_certificate: bytes) -> bytes:
    """SHA-256 of a DER certificate: what a client pins and what the auth binds."""
    return hashlib.sha256(der_certificate).digest()


def format_fingerprint(fingerprint: bytes) -> str:
    """Human form, as ``qsecret relay --self-signed`` prints it: ``AB:CD:...``."""
    return ":".join(f"{b:02X}" for b in fingerprint)


def parse_fingerprint(text: str) -> bytes:
    """Accept ``AB:CD:..``, ``abcd..`` or ``sha256:...`` and return 32 bytes (ValueError else)."""
    cleaned = text.strip().lower().removeprefix("sha256:").replace(":", "")
    data = bytes.fromhex(cleaned)
    if len(data) != 32:
        raise ValueError("a SHA-256 fingerprint has 32 bytes (64 hex digits)")
    return data
