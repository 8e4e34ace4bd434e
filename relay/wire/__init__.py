"""The relay wire protocol, sans-I/O: the only part of the relay a client imports.

Both ends of a connection live here: :mod:`relay.wire.client` (``ClientConnection``)
and :mod:`relay.wire.server` (``ServerConnection``, the relay's side: hello, login,
limits, strikes; imported by the relay only).

Frame flows (``C`` client, ``R`` relay; every text frame is ``{"v":1,"t":...}``):

* login:   R ``hello{relay,nonce,versions,limits}`` -> C ``auth{handle,identity,relay,sig}``
           -> R ``auth_ok{handle,new,queued,prekeys}`` (or ``error{auth_failed}`` and a fresh
           ``hello``; the 3rd failure closes with 1008). ``sig`` = hybrid signature over
           :func:`auth_message`. The first login of a handle binds it to the identity key.
* send:    C ``send{msg,to,body,id?}`` -> R ``stored{msg,dup}`` once durable (or, for several
           sends made durable by one commit, one ``stored_many{msgs}``), or
           ``error{code,msg}``. The relay drops repeats of (sender, msg) and says ``dup``.
* receive: R ``deliver{seq,msg,from,body,ts}`` (queued ones first, after ``auth_ok``)
           -> C ``ack{seqs}``; unacked ones come again (on reconnect, or after the
           relay's redelivery delay). Applications de-duplicate by (from, msg).
* prekeys: C ``prekeys_upload{bundle}`` -> R ``prekeys_ok{stored}``;
           C ``prekeys_fetch{handle}`` -> R ``bundle{handle,bundle,remaining}`` with at most
           one one-time prekey (consumed; empty list when none are left);
           R ``prekeys_low{remaining}`` to the owner when they run low.
* streams: C ``stream_open{stream,to,kind}`` -> R ``stream_ok`` (and ``stream_incoming`` to
           the peer if online); then binary frames (:mod:`relay.wire.binary`) both ways;
           ``stream_close`` (relayed to the other end). ``kind`` "media": live only, both ends
           online, dies with either connection. ``kind`` "file": durable; frames for an
           offline (or behind) endpoint are spooled at the relay and sent when it logs in;
           the endpoint deletes them with C ``stream_ack{stream,seqs}``; refusals of frames
           are ``error{code,stream}`` (e.g. ``quota_exceeded``).
           C ``stream_open_group{stream,to[]}`` -> R ``stream_ok``: a durable file stream
           whose frames the opener uploads once and the relay spools for every recipient.
           C ``spool_rewind`` -> the relay sends this connection its spool again from the
           start (frames it dropped unacked come again; duplicates are the client's to skip).
* keepalive: C ``ping`` -> R ``pong`` (counts against the idle timeout; websocket pings do not).
"""

from typing import TYPE_CHECKING

from keysource.lazy import lazy_getattr

# Loaded on first use: the transfer manifest needs one constant from .binary, and
# 'qsecret send-file' starts hashing before the frame classes (and the rest) load.
_HOME = {
    **dict.fromkeys([
        "AUTH_DOMAIN", "auth_message", "certificate_fingerprint", "format_fingerprint",
        "parse_fingerprint",
    ], ".auth"),
    **dict.fromkeys([
        "FLAG_FINAL", "HEADER_BYTES", "KIND_FILE_CHUNK", "KIND_MEDIA", "MAX_BINARY_PAYLOAD",
        "BinaryFrame", "encode_binary", "encode_binary_into", "parse_binary",
        "parse_binary_header",
    ], ".binary"),
    **dict.fromkeys([
        "ClientConnection", "Event", "new_message_id",
    ], ".client"),
    **dict.fromkeys([
        "CLOSE_BAD_UTF8", "CLOSE_GOING_AWAY", "CLOSE_POLICY", "CLOSE_TOO_BIG",
        "CLOSE_TRY_AGAIN", "ERROR_CODES", "WireError",
    ], ".errors"),
    **dict.fromkeys([
        "HYBRID_PUBLIC_KEY_BYTES", "HYBRID_SIGNATURE_BYTES", "MAX_ACK_SEQS",
        "MAX_ENVELOPE_BYTES", "MAX_FRAME_BYTES", "MAX_GROUP_RECIPIENTS",
        "MAX_ONE_TIME_KEY_BYTES",
        "MAX_ONE_TIME_PER_UPLOAD", "MAX_SIGNED_PART_BYTES", "MAX_STORED_MSGS",
        "NONCE_BYTES", "PROTOCOL_VERSION", "SUPPORTED_VERSIONS", "Ack", "Auth", "AuthOk",
        "Bundle", "Deliver", "Error", "Frame", "Hello", "OneTimePrekey", "Ping", "Pong",
        "PrekeyBundle", "PrekeysFetch", "PrekeysLow", "PrekeysOk", "PrekeysUpload", "Send",
        "SendGroup", "SpoolRewind", "Stored", "StoredGroup", "StoredMany", "StreamAck",
        "StreamClose",
        "StreamIncoming", "StreamOk", "StreamOpen", "StreamOpenGroup", "fanout_msg_id",
        "parse_client_frame", "parse_server_frame",
    ], ".frames"),
    **dict.fromkeys([
        "one_time_message", "sign_bundle", "signed_part_message", "verify_bundle",
    ], ".prekeys"),
}

if TYPE_CHECKING:
    from .auth import (
        AUTH_DOMAIN,
        auth_message,
        certificate_fingerprint,
        format_fingerprint,
        parse_fingerprint,
    )
    from .binary import (
        FLAG_FINAL,
        HEADER_BYTES,
        KIND_FILE_CHUNK,
        KIND_MEDIA,
        MAX_BINARY_PAYLOAD,
        BinaryFrame,
        encode_binary,
        encode_binary_into,
        parse_binary,
        parse_binary_header,
    )
    from .client import ClientConnection, Event, new_message_id
    from .errors import (
        CLOSE_BAD_UTF8,
        CLOSE_GOING_AWAY,
        CLOSE_POLICY,
        CLOSE_TOO_BIG,
        CLOSE_TRY_AGAIN,
        ERROR_CODES,
        WireError,
    )
    from .frames import (
        HYBRID_PUBLIC_KEY_BYTES,
        HYBRID_SIGNATURE_BYTES,
        MAX_ACK_SEQS,
        MAX_ENVELOPE_BYTES,
        MAX_FRAME_BYTES,
        MAX_GROUP_RECIPIENTS,
        MAX_ONE_TIME_KEY_BYTES,
        MAX_ONE_TIME_PER_UPLOAD,
        MAX_SIGNED_PART_BYTES,
        MAX_STORED_MSGS,
        NONCE_BYTES,
        PROTOCOL_VERSION,
        SUPPORTED_VERSIONS,
        Ack,
        Auth,
        AuthOk,
        Bundle,
        Deliver,
        Error,
        Frame,
        Hello,
        OneTimePrekey,
        Ping,
        Pong,
        PrekeyBundle,
        PrekeysFetch,
        PrekeysLow,
        PrekeysOk,
        PrekeysUpload,
        Send,
        SendGroup,
        SpoolRewind,
        Stored,
        StoredGroup,
        StoredMany,
        StreamAck,
        StreamClose,
        StreamIncoming,
        StreamOk,
        StreamOpen,
        StreamOpenGroup,
        fanout_msg_id,
        parse_client_frame,
        parse_server_frame,
    )
    from .prekeys import one_time_message, sign_bundle, signed_part_message, verify_bundle

__all__ = [
    "AUTH_DOMAIN",
    "Ack",
    "Auth",
    "AuthOk",
    "BinaryFrame",
    "Bundle",
    "CLOSE_BAD_UTF8",
    "CLOSE_GOING_AWAY",
    "CLOSE_POLICY",
    "CLOSE_TOO_BIG",
    "CLOSE_TRY_AGAIN",
    "ClientConnection",
    "Deliver",
    "ERROR_CODES",
    "Error",
    "Event",
    "FLAG_FINAL",
    "Frame",
    "HEADER_BYTES",
    "HYBRID_PUBLIC_KEY_BYTES",
    "HYBRID_SIGNATURE_BYTES",
    "Hello",
    "KIND_FILE_CHUNK",
    "KIND_MEDIA",
    "MAX_ACK_SEQS",
    "MAX_STORED_MSGS",
    "MAX_BINARY_PAYLOAD",
    "MAX_ENVELOPE_BYTES",
    "MAX_FRAME_BYTES",
    "MAX_GROUP_RECIPIENTS",
    "MAX_ONE_TIME_KEY_BYTES",
    "MAX_ONE_TIME_PER_UPLOAD",
    "MAX_SIGNED_PART_BYTES",
    "NONCE_BYTES",
    "OneTimePrekey",
    "PROTOCOL_VERSION",
    "Ping",
    "Pong",
    "PrekeyBundle",
    "PrekeysFetch",
    "PrekeysLow",
    "PrekeysOk",
    "PrekeysUpload",
    "SUPPORTED_VERSIONS",
    "Send",
    "SendGroup",
    "SpoolRewind",
    "Stored",
    "StoredGroup",
    "StoredMany",
    "StreamAck",
    "StreamClose",
    "StreamIncoming",
    "StreamOk",
    "StreamOpen",
    "StreamOpenGroup",
    "WireError",
    "auth_message",
    "certificate_fingerprint",
    "encode_binary",
    "encode_binary_into",
    "format_fingerprint",
    "new_message_id",
    "one_time_message",
    "parse_binary",
    "parse_binary_header",
    "fanout_msg_id",
    "parse_client_frame",
    "parse_fingerprint",
    "parse_server_frame",
    "sign_bundle",
    "signed_part_message",
    "verify_bundle",
]

__getattr__ = lazy_getattr(__name__, _HOME)
