"""Canonical encodings the prekey signatures cover, and the check the relay runs.

A bundle (see :class:`relay.wire.frames.PrekeyBundle`) carries hybrid signatures
by its ``identity`` key over::

    signed part:      "qsecret/v1/prekey-signed\\x00"   || lp(handle) || lp(identity) || lp(signed)
    one-time prekey:  "qsecret/v1/prekey-one-time\\x00" || lp(handle) || lp(identity)
                                                        || u32(key_id) || lp(key)

``lp`` is a 4-byte big-endian length then the bytes; ``u32`` is 4 bytes
big-endian. The handle is bound so a bundle cannot be republished under another
name. Signing is the client's business; the relay verifies with keysource.pq
(this module stays free of crypto: ``verify`` is passed in).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from .codec import lp
from .frames import OneTimePrekey, PrekeyBundle

SIGNED_DOMAIN = b"qsecret/v1/prekey-signed\x00"
ONE_TIME_DOMAIN = b"qsecret/v1/prekey-one-time\x00"


def signed_part_message(handle: str, identity: bytes, signed: bytes) -> bytes:
    """The bytes ``PrekeyBundle.signed_sig`` signs."""
    return SIGNED_DOMAIN + lp(handle.encode()) + lp(identity) + lp(signed)


def one_time_message(handle: str, identity: bytes, key_id: int, key: bytes) -> bytes:
    """The bytes ``OneTimePrekey.sig`` signs."""
    return (
        ONE_TIME_DOMAIN + lp(handle.encode()) + lp(identity) + struct.pack(">I", key_id) + lp(key)
    )


def sign_bundle(
    handle: str,
    identity: bytes,
    signed: bytes,
    one_time: list[tuple[int, bytes]],
    sign: Callable[[bytes], bytes],
) -> PrekeyBundle:
    """Build a bundle, signing each part with ``sign`` (the identity's hybrid signer)."""
    return PrekeyBundle(
        identity,
        signed,
        sign(signed_part_message(handle, identity, signed)),
        tuple(
            OneTimePrekey(key_id, key, sign(one_time_message(handle, identity, key_id, key)))
            for key_id, key in one_time
        ),
    )


def verify_bundle(
    handle: str, bundle: PrekeyBundle, verify: Callable[[bytes, bytes, bytes], None]
) -> None:
    """Check every signature; ``verify(public_key, message, sig)`` raises when one is bad."""
    verify(bundle.identity, signed_part_message(handle, bundle.identity, bundle.signed),
           bundle.signed_sig)
    for otk in bundle.one_time:
        verify(bundle.identity,
               one_time_message(handle, bundle.identity, otk.key_id, otk.key), otk.sig)
