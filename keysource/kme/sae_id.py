"""The one SAE_ID rule, shared by the KME and every client of one.

A KME checks the SAE_IDs of requests and certificate names with it; a messenger checks the
SAE_ID a peer put in its prekey bundle or handshake with it before the value can reach a
KME URL. The rule is a full match (``re.fullmatch``: a trailing newline is not allowed
through, as ``^...$`` with ``match`` would let it), so control characters, '/', '%', spaces
and empty or over-long values are all refused. Values that pass are URL-safe as they are;
:func:`sae_id_path_segment` still percent-encodes them, so a URL is built one way only.

Imports nothing heavy: the messenger's start path and the KME's parser both load it.
"""

from __future__ import annotations

import re
from urllib.parse import quote

MAX_SAE_ID_CHARS = 64
# SAE_IDs with this prefix name the KMEs of a network themselves when they draw link keys to
# relay a key (keysource.kme.network_node): the KME refuses SAE certificates that use it.
RESERVED_SAE_PREFIX = "relay."
SAE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SAE_ID_RULE = (f"1-{MAX_SAE_ID_CHARS} characters: letters, digits, '.', '_', '-', "
               "starting with a letter or digit")


class InvalidSaeId(ValueError):
    """A value is not an SAE_ID; the message says which rule it breaks."""


def sae_id_problem(value: object) -> str | None:
    """Why ``value`` is not a valid SAE_ID, or None if it is one."""
    if not isinstance(value, str):
        return f"not a string ({type(value).__name__})"
    if not value:
        return "empty"
    if len(value) > MAX_SAE_ID_CHARS:
        return f"{len(value)} characters, more than {MAX_SAE_ID_CHARS}"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in value):
        return "contains control characters"
    if SAE_ID_PATTERN.fullmatch(value) is None:
        return f"not {SAE_ID_RULE}"
    return None


def is_valid_sae_id(value: object) -> bool:
    return sae_id_problem(value) is None


def check_sae_id(value: object, what: str = "SAE_ID") -> str:
    """``value`` if it is a valid SAE_ID, else :class:`InvalidSaeId` naming ``what``."""
    problem = sae_id_problem(value)
    if problem is not None:
        shown = repr(value[:80] + ("..." if len(value) > 80 else "")) if isinstance(
            value, str) else type(value).__name__
        raise InvalidSaeId(f"invalid {what} {shown}: {problem}")
    assert isinstance(value, str)
    return value


def sae_id_path_segment(value: object, what: str = "SAE_ID") -> str:
    """``value`` checked and percent-encoded for one URL path segment (nothing is safe)."""
    return quote(check_sae_id(value, what), safe="")
