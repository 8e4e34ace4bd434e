"""Field codecs shared by every frame: base64 bytes, handles, message IDs, length prefixes.

Kept strict on purpose: one accepted spelling per value, so the relay and the
client never disagree about what a frame means.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct

from .errors import WireError

HANDLE_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
MSG_ID_RE = re.compile(r"[0-9a-f]{32}")
REQ_ID_MAX = 64


def b64encode(data: bytes) -> str:
    """Standard base64 (RFC 4648 section 4) with padding, as every bytes field travels."""
    return base64.b64encode(data).decode("ascii")


def b64decode(field: str, value: object, *, max_bytes: int, min_bytes: int = 0) -> bytes:
    """Decode a base64 field, refusing wrong types, bad alphabet and out-of-range sizes."""
    if not isinstance(value, str):
        raise WireError("bad_field", f"{field} must be a base64 string")
    # 4 characters carry 3 bytes: reject before decoding anything too big.
    if len(value) > (max_bytes + 2) // 3 * 4:
        raise WireError("too_large", f"{field} is larger than {max_bytes} bytes")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise WireError("bad_field", f"{field} is not valid base64") from None
    if not min_bytes <= len(data) <= max_bytes:
        if len(data) > max_bytes:
            raise WireError("too_large", f"{field} is larger than {max_bytes} bytes")
        raise WireError("bad_field", f"{field} must be {min_bytes}..{max_bytes} bytes")
    return data


def check_handle(field: str, value: object) -> str:
    """A handle: 1-32 chars of a-z 0-9 . _ - starting with a letter or digit."""
    if not isinstance(value, str) or not HANDLE_RE.fullmatch(value):
        raise WireError(
            "bad_field", f"{field} must be 1-32 chars of a-z 0-9 . _ - (starting a-z or 0-9)"
        )
    return value


def check_msg_id(field: str, value: object) -> str:
    """A message ID: 32 lowercase hex digits (16 random bytes, e.g. uuid4().hex)."""
    if not isinstance(value, str) or not MSG_ID_RE.fullmatch(value):
        raise WireError("bad_field", f"{field} must be 32 lowercase hex digits")
    return value


def lp(data: bytes) -> bytes:
    """4-byte big-endian length prefix, then the bytes: the unit of every signed encoding."""
    return struct.pack(">I", len(data)) + data
