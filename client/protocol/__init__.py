"""The qsecret protocol core (sans-I/O): identities, bundles, handshake, triple ratchet, OTP.

Nothing here opens a socket or a file. See :mod:`client.protocol.session` for the
API the apps use, and each module's docstring for its part of the specification.
"""

from keysource.mix import QkdPolicy, QkdRequired

from .bundle import PrekeyBundle, PrekeySecrets, generate_prekeys, parse_bundle, parse_bundle_parts
from .errors import (
    BadSignature,
    DecryptionFailed,
    IdentityMismatch,
    MalformedMessage,
    OtpExhausted,
    PrekeyUnavailable,
    ProtocolError,
    QkdMissing,
    ReplayedMessage,
    TooManySkipped,
    UnsupportedVersion,
    WrongRecipient,
)
from .identity import Identity, PublicIdentity, qr_svg, qr_text, safety_number, safety_qr
from .qkd import QkdKeys
from .ratchet import Deferred, Discarded, RatchetConfig, SendPlan
from .session import MODE_OTP, MODE_RATCHET, Message, Outgoing, Session, SessionStatus, wire_id

__all__ = [
    "MODE_OTP",
    "MODE_RATCHET",
    "BadSignature",
    "DecryptionFailed",
    "Deferred",
    "Discarded",
    "Identity",
    "IdentityMismatch",
    "MalformedMessage",
    "Message",
    "OtpExhausted",
    "Outgoing",
    "PrekeyBundle",
    "PrekeySecrets",
    "PrekeyUnavailable",
    "ProtocolError",
    "PublicIdentity",
    "QkdKeys",
    "QkdMissing",
    "QkdPolicy",
    "QkdRequired",
    "RatchetConfig",
    "ReplayedMessage",
    "SendPlan",
    "Session",
    "SessionStatus",
    "TooManySkipped",
    "UnsupportedVersion",
    "WrongRecipient",
    "generate_prekeys",
    "parse_bundle",
    "parse_bundle_parts",
    "qr_svg",
    "qr_text",
    "safety_number",
    "safety_qr",
    "wire_id",
]
