"""The one way a key_ID, binding or relay ID (a UUID) is read: as canonical UUID text.

KMEs compare these IDs as strings (SQLite keys, JSON), so every one is stored and compared in
one spelling: lowercase and hyphenated, as ``str(uuid.UUID(...))`` writes it. Most IDs a KME
reads were written that way by another KME, so they are recognised with one regular
expression; only other spellings (upper case, braces, ``urn:uuid:``, no hyphens) go through
``uuid.UUID``, which a relay hop would otherwise pay a dozen times per key. Standard library
only: the pool, the ETSI layer and the key relay all import it.

The QKD link carries a block's key_IDs as 16 bytes each; ``uuid_texts`` and ``uuid_bytes``
convert a block's worth (thousands of IDs) at once, where ``uuid.UUID`` per ID would cost
more than a block's sifting of the bits.
"""

from __future__ import annotations

import re
import uuid

_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def canonical_uuid(value: str) -> str:
    """``value`` as canonical UUID text; ValueError if it is not a UUID."""
    if _CANONICAL.fullmatch(value):
        return value
    return str(uuid.UUID(value))


def version4_uuids(raw: bytes) -> list[str]:
    """Random bytes (16 per ID) as version-4 UUID text: the version and variant bits set as
    ``uuid.UUID(bytes=..., version=4)`` sets them, the other 122 bits from ``raw``."""
    if len(raw) % 16:
        raise ValueError("UUIDs are 16 bytes each")
    marked = bytearray(raw)
    for at in range(0, len(marked), 16):
        marked[at + 6] = (marked[at + 6] & 0x0F) | 0x40
        marked[at + 8] = (marked[at + 8] & 0x3F) | 0x80
    return uuid_texts(bytes(marked))


def uuid_texts(raw: bytes) -> list[str]:
    """16 bytes per ID (as ``uuid.UUID.bytes``) to canonical UUID text."""
    if len(raw) % 16:
        raise ValueError("UUIDs are 16 bytes each")
    h = raw.hex()
    return [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-{h[i + 12:i + 16]}-{h[i + 16:i + 20]}-"
            f"{h[i + 20:i + 32]}" for i in range(0, len(h), 32)]


def uuid_bytes(ids: list[str]) -> bytes:
    """Canonical UUID texts to 16 bytes each (ValueError for any other spelling)."""
    if not all(len(i) == 36 for i in ids):
        raise ValueError("not canonical UUID text")
    try:
        raw = bytes.fromhex("".join(ids).replace("-", ""))
    except ValueError as exc:
        raise ValueError("not canonical UUID text") from exc
    if len(raw) != 16 * len(ids) or uuid_texts(raw) != ids:
        raise ValueError("not canonical UUID text")
    return raw


__all__ = ["canonical_uuid", "uuid_bytes", "uuid_texts", "version4_uuids"]
