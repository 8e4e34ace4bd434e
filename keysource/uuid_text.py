"""The one way a key_ID, binding or relay ID (a UUID) is read: as canonical UUID text.

KMEs compare these IDs as strings (SQLite keys, JSON), so every one is stored and compared in
one spelling: lowercase and hyphenated, as ``str(uuid.UUID(...))`` writes it. Most IDs a KME
reads were written that way by another KME, so they are recognised with one regular
expression; only other spellings (upper case, braces, ``urn:uuid:``, no hyphens) go through
``uuid.UUID``, which a relay hop would otherwise pay a dozen times per key. Standard library
only: the pool, the ETSI layer and the key relay all import it.
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


__all__ = ["canonical_uuid"]
