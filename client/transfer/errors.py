"""Errors of the file-transfer core; each message says what happened and what to do."""

from __future__ import annotations


class TransferError(Exception):
    """Base class for every error of client.transfer."""


class ManifestError(TransferError):
    """A manifest could not be built, encoded or decoded (bad field, limit exceeded)."""


class OutdatedOffer(ManifestError):
    """An offer in a format this qsecret no longer takes: the sender must update.

    ``transfer_id`` (when the offer names a well-formed one) lets the receiver decline it, so
    the sender is told why instead of waiting for an answer.
    """

    def __init__(self, message: str, transfer_id: bytes | None) -> None:
        super().__init__(message)
        self.transfer_id = transfer_id


class SourceError(TransferError):
    """A path given to send cannot be sent (missing, special file, unreadable)."""


class UnsafeName(TransferError):
    """A name from the peer cannot be made safe to land (e.g. nothing usable left)."""


class ChunkRejected(TransferError):
    """A chunk was refused; the transfer state is unchanged and the sender can resend."""

    reason = "rejected"


class TamperedChunk(ChunkRejected):
    """Authentication failed: modified, truncated, or sealed for another file/transfer."""

    reason = "tampered"


class OutOfOrderChunk(ChunkRejected):
    """A chunk arrived ahead of the next expected one (a gap): resend from the resume point."""

    reason = "out-of-order"


class ReplayedChunk(ChunkRejected):
    """A chunk that is already written arrived again; it was ignored (idempotent)."""

    reason = "replay"


class MalformedFrame(ChunkRejected):
    """A frame is not a well-formed transfer frame (size, magic, version, kind, fields)."""

    reason = "malformed"





class StateError(TransferError):
    """An operation does not fit the current state (e.g. sending before acceptance)."""


class TruncatedStream(TransferError):
    """A group file's upload ended (the sender's sealed ``uploaded`` record came) before
    every chunk arrived here: it cannot be completed, and nothing of it was saved."""
