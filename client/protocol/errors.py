"""Errors of the protocol core; each message says what was wrong and what to do."""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of every client.protocol error."""


class MalformedMessage(ProtocolError):
    """Bytes that do not parse as the structure they claim to be (nothing was changed)."""


class UnsupportedVersion(MalformedMessage):
    """A structure of a version this client does not speak."""


class BadSignature(ProtocolError):
    """A prekey, bundle or initial-message signature did not verify."""


class IdentityMismatch(ProtocolError):
    """A peer presented an identity other than the one expected (pinned or addressed)."""


class WrongRecipient(ProtocolError):
    """An initial message addressed to another user, identity or SAE (a replay elsewhere)."""


class PrekeyUnavailable(ProtocolError):
    """An initial message names a one-time prekey we no longer hold (already used)."""


class DecryptionFailed(ProtocolError):
    """Authentication failed: tampered, truncated or forged bytes (state unchanged)."""


class ReplayedMessage(ProtocolError):
    """A message whose key was already used or deleted: a duplicate or a replay."""


class TooManySkipped(ProtocolError):
    """A message asks to skip more message keys than the window allows."""


class QkdMissing(ProtocolError):
    """The message names QKD key_IDs whose keys the caller did not supply."""


class OtpExhausted(ProtocolError):
    """The one-time pad cannot cover the message: fetch more QKD keys first."""
