"""Events the transfer state machines return; the I/O layer and the UIs react to them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ChunkRejected
from .progress import Progress


@dataclass(frozen=True)
class Event:
    """Base class of every transfer event."""


@dataclass(frozen=True)
class Accepted(Event):
    """The receiver accepted; sending starts at (file_index, chunk_index)."""

    file_index: int
    chunk_index: int


@dataclass(frozen=True)
class Rewound(Event):
    """The receiver asked to resend from (file_index, chunk_index) (a gap or a restart)."""

    file_index: int
    chunk_index: int


@dataclass(frozen=True)
class ProgressUpdate(Event):
    progress: Progress


@dataclass(frozen=True)
class ChunkStored(Event):
    file_index: int
    chunk_index: int


@dataclass(frozen=True)
class ChunkRefused(Event):
    """A chunk was refused (or, for a replay, ignored); nothing was written or lost."""

    error: ChunkRejected

    @property
    def reason(self) -> str:
        return self.error.reason


@dataclass(frozen=True)
class FileDelivered(Event):
    """Sender side: the receiver verified and landed this file."""

    file_index: int


@dataclass(frozen=True)
class FileLanded(Event):
    """Receiver side: verified (SHA-256) and renamed into place at ``path``."""

    file_index: int
    path: Path
    renamed: bool  # landed under another name than the sender's (collision or unsafe name)


@dataclass(frozen=True)
class IntegrityFailed(Event):
    """A finished file's SHA-256 did not match; it was not landed."""

    file_index: int
    retrying: bool


@dataclass(frozen=True)
class TransferComplete(Event):
    pass


@dataclass(frozen=True)
class Cancelled(Event):
    reason: str
    by_peer: bool


@dataclass(frozen=True)
class Declined(Event):
    reason: str


@dataclass(frozen=True)
class ControlIgnored(Event):
    """A control frame was stale, replayed or malformed and changed nothing."""

    reason: str
