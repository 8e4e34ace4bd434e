"""Error codes of the wire protocol and the exception that carries them.

Every refusal the relay sends is an ``error`` frame with one of these codes; the
reaction column of :data:`ERROR_CODES` is the documented behaviour.
"""

from __future__ import annotations

# code -> what the relay does about it (the connection lives unless it says so).
ERROR_CODES: dict[str, str] = {
    "bad_json": "text frame is not a JSON object; error frame, connection lives, +1 strike",
    "bad_version": "missing or unknown 'v'; error frame (lists supported versions), +1 strike",
    "unknown_type": "unknown 't'; error frame, +1 strike",
    "missing_field": "a required field is absent; error frame, +1 strike",
    "bad_field": "a field has the wrong type, format or size, or is unknown; +1 strike",
    "too_large": "a field is over its documented limit; error frame, +1 strike",
    "not_authenticated": "any frame but 'auth' before authentication; +1 strike",
    "already_authenticated": "a second 'auth' on a connection; +1 strike",
    "auth_failed": "signature, nonce or key did not verify; a fresh 'hello' follows, +1 strike;"
    " the 3rd failure closes the connection with 1008",
    "wrong_relay": "auth names another relay id; same as auth_failed",
    "handle_taken": "handle is bound to another identity key; same as auth_failed",
    "unknown_recipient": "no such handle registered; error frame (envelope not stored,"
    " or file stream not opened)",
    "quota_exceeded": "recipient's queue (envelopes) or spool (file stream frames; the error"
    " carries 'stream') is full; nothing stored, no strike",
    "share_exceeded": "the sender's share of the recipient's queue or spool is full (the"
    " recipient has room for others); nothing stored, no strike",
    "store_full": "the relay's store is at its global cap; nothing stored, no strike",
    "too_many_registrations": "login of a new handle refused: too many new handles from this"
    " address within the window (the message says when to retry); same as auth_failed",
    "bad_binary_frame": "binary frame header malformed; error frame, +1 strike",
    "unknown_stream": "binary frame, stream_close or stream_ack for a stream that is not open"
    " or of which the caller is no endpoint; +1 strike (no strike for stream_ack, or for a"
    " stream that was just closed or expired)",
    "too_many_streams": "stream_open over the limit: live media streams per connection, or"
    " file streams opened per handle",
    "recipient_offline": "media stream_open to a handle with no live connection (file streams"
    " are spooled instead)",
    "bad_prekeys": "prekey bundle signature or identity did not verify; nothing stored, +1 strike",
    "no_bundle": "prekeys_fetch for a handle that never uploaded a bundle",
    "rate_limited": "prekeys_fetch over the requester's fetch rate (the message names the"
    " limit); no key taken, no strike",
    "internal": "the relay could not complete the request (e.g. storage error); retry later",
    "too_many_sessions": "a login of a handle that already has max_sessions_per_handle"
    " connections on this relay; refused, then the connection closes with 1013, no strike",
}

# Refusals of a send or a file frame for lack of room (final for that message: resending
# at once fails the same way). Each names whose limit it is in its message.
QUOTA_CODES = ("quota_exceeded", "share_exceeded", "store_full")

# Not an error: a connection over its frame rate is throttled (the relay reads no
# faster than ``limits.rate`` frames/s after a ``limits.burst``; TCP pushes back).
# Nothing is dropped, so nothing has to be resent.

# Close codes the relay uses (RFC 6455 section 7.4.1).
CLOSE_POLICY = 1008  # repeated abuse, auth timeout, 3 failed auths
CLOSE_TOO_BIG = 1009  # frame over max_size (raised by websockets itself)
CLOSE_BAD_UTF8 = 1007  # text frame that is not UTF-8 (raised by websockets itself)
CLOSE_GOING_AWAY = 1001  # idle timeout or relay shutdown
CLOSE_TRY_AGAIN = 1013  # a login over the handle's session cap (try again later)


class WireError(Exception):
    """A frame broke the wire rules; ``code`` is one of :data:`ERROR_CODES`.

    ``req_id`` is the refused frame's request id when it could be read, so the error
    frame can name the request it answers.
    """

    def __init__(self, code: str, message: str, req_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.req_id = req_id
