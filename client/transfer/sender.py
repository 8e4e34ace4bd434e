"""The sending state machine: read, seal, respect the window, follow acks and resume points.

Sans-I/O: chunks come from a reader callback ``reader(file_index, offset, length) -> bytes``
(so the file is never held in memory), frames go out through ``next_frame()`` and control
frames from the receiver come in through ``receive_control()``. At most ``window_chunks``
chunks are in flight (sent but not acknowledged); the I/O layer calls ``next_frame()`` until
it returns ``None`` and again whenever ``receive_control`` reports progress; if no ack
arrives for a while with chunks in flight, it calls ``retransmit()`` (go-back-N).

The receiver is authoritative about where to continue: its ``resume`` message (sent on
accept, reconnect, restart or after a gap) moves the send position, back or forward.
``snapshot()`` is a small JSON-able dict (no key material) the I/O layer persists so a
restarted sender continues from the last acknowledged chunk.

Each file is hashed (SHA-256) as its chunks are read for sending, and the digest goes into
the file's sealed final record (see ``stream.py``): nothing is read before the first chunk.
"""

from __future__ import annotations

import enum
import hashlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .control import clip_reason, open_control, seal_control
from .errors import ChunkRejected, SourceError, StateError, TransferError
from .events import (
    Accepted,
    Cancelled,
    ControlIgnored,
    Declined,
    Event,
    FileDelivered,
    ProgressUpdate,
    Rewound,
    TransferComplete,
)
from .fileio import open_read, read_into_at
from .keys import RECEIVER_TO_SENDER, SENDER_TO_RECEIVER, TransferKeys
from .manifest import BuiltManifest, Manifest
from .progress import Progress, ProgressMeter
from .stream import ChunkSealer

# (file index, offset, length) -> the bytes; they need only stay valid until the next call.
ChunkReader = Callable[[int, int, int], bytes | bytearray | memoryview]
DEFAULT_WINDOW_CHUNKS = 8
SNAPSHOT_VERSION = 1
SEQ_BLOCK = 1024


class SenderStatus(enum.Enum):
    OFFERED = "offered"  # waiting for accept
    SENDING = "sending"
    COMPLETE = "complete"
    CANCELLED = "cancelled"
    DECLINED = "declined"
    FAILED = "failed"


class FileReader:
    """A reader callback over the sender's files (one open descriptor at a time).

    With ``stamps`` (size, mtime_ns per file, as ``BuiltManifest.stamps`` records them when
    the files are listed) a file modified since it was offered is refused when opened and
    after its last chunk is read, with a clear error that reaches the receiver, instead of
    sending a mix of old and new bytes.

    It reads into one buffer of its own and returns a view of it: the bytes stay valid
    until the next call (what ``ChunkReader`` promises, and all the sender needs).
    """

    def __init__(self, sources: Sequence[str | os.PathLike[str]],
                 stamps: Sequence[tuple[int, int]] | None = None) -> None:
        self._sources = [Path(p) for p in sources]
        self._stamps = list(stamps) if stamps is not None else None
        self._fd: int | None = None
        self._index = -1
        self._buffer = bytearray()

    @classmethod
    def for_manifest(cls, built: BuiltManifest) -> FileReader:
        return cls(built.sources, built.stamps)

    def _check_unchanged(self, file_index: int) -> None:
        if self._stamps is None or self._fd is None:
            return
        info = os.fstat(self._fd)
        if (info.st_size, info.st_mtime_ns) != tuple(self._stamps[file_index]):
            raise SourceError(f"{self._sources[file_index]} changed since it was offered: "
                              "send it again")

    def __call__(self, file_index: int, offset: int, length: int) -> memoryview:
        if file_index != self._index:
            self.close()
            try:
                self._fd = open_read(self._sources[file_index])
            except OSError as exc:
                raise SourceError(f"{self._sources[file_index]}: {exc.strerror}") from None
            self._index = file_index
            self._check_unchanged(file_index)
        assert self._fd is not None
        if len(self._buffer) != length:
            self._buffer = bytearray(length)
        count = read_into_at(self._fd, self._buffer, offset)
        if count < length or (self._stamps is not None
                              and offset + length >= self._stamps[file_index][0]):
            self._check_unchanged(file_index)
        return memoryview(self._buffer)[:count]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._index = None, -1


class RunningHash:
    """SHA-256 of one file, fed with its chunks in order as they are read for sending.

    It covers a prefix of the file's chunks: a chunk sent again (a rewind) is already in it,
    and the digest stays that of the first read, so a file whose bytes change between two
    reads fails the receiver's check. A jump ahead (a resume point, or a sender restored
    after a restart: hash states are not persisted) re-reads the skipped chunks once, just
    before the chunk after them; only a resumed transfer pays that.
    """

    def __init__(self, file_index: int) -> None:
        self.file_index = file_index
        self.chunks = 0  # chunks [0, chunks) are in the digest
        self._digest = hashlib.sha256()

    def catch_up(self, chunk_index: int,
                 read_chunk: Callable[[int], bytes | bytearray | memoryview]) -> None:
        """Hash the chunks skipped before ``chunk_index`` (call it before reading that
        chunk: a reader may reuse its buffer)."""
        while self.chunks < chunk_index:
            self._digest.update(read_chunk(self.chunks))
            self.chunks += 1

    def add(self, chunk_index: int, data: bytes | bytearray | memoryview) -> None:
        """The chunk at ``chunk_index``, once ``catch_up`` reached it (again: no change)."""
        if self.chunks == chunk_index:
            self._digest.update(data)
            self.chunks += 1

    def digest(self) -> bytes:
        return self._digest.digest()


class TransferSender:
    """One outgoing transfer; create it when the offer is sent, or ``restore`` it."""

    def __init__(self, keys: TransferKeys, reader: ChunkReader, *,
                 window_chunks: int = DEFAULT_WINDOW_CHUNKS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if window_chunks < 1:
            raise StateError("the flow-control window must hold at least one chunk")
        self.keys = keys
        self.manifest: Manifest = keys.manifest
        self.reader = reader
        self.window_chunks = window_chunks
        self.status = SenderStatus.OFFERED
        self._outbox: list[bytes] = []
        self._seq = 0
        self._peer_seq = -1
        count = len(self.manifest.files)
        self._chunks_before = [0]
        self._bytes_before = [0]
        for index, entry in enumerate(self.manifest.files):
            self._chunks_before.append(self._chunks_before[-1] + self.manifest.chunk_count(index))
            self._bytes_before.append(self._bytes_before[-1] + entry.size)
        self._end = (count, 0)
        self._next = (0, 0)
        self._acked = (0, 0)
        self._delivered = 0  # files reported delivered
        self._sealer: ChunkSealer | None = None
        self._sealer_index = -1
        self._hash: RunningHash | None = None
        self.meter = ProgressMeter(self.manifest.total_size, count, clock)

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> dict[str, Any]:
        """What to persist (no key material): manifest, status, last acknowledged position."""
        return {
            "version": SNAPSHOT_VERSION,
            "manifest": self.manifest.encode().hex(),
            "status": self.status.value,
            "acked": list(self._acked),
            "seq": self._seq,
            "peer_seq": self._peer_seq,
        }

    @staticmethod
    def manifest_from_snapshot(snapshot: dict[str, Any]) -> Manifest:
        """The manifest in a snapshot, to re-derive the keys before ``restore``."""
        if snapshot.get("version") != SNAPSHOT_VERSION:
            raise StateError("sender snapshot of an unknown version")
        return Manifest.decode(bytes.fromhex(snapshot["manifest"]), stored=True)

    @classmethod
    def restore(cls, snapshot: dict[str, Any], keys: TransferKeys, reader: ChunkReader,
                **options: Any) -> TransferSender:
        """Continue after a restart from the last acknowledged chunk."""
        if cls.manifest_from_snapshot(snapshot).encode() != keys.manifest.encode():
            raise StateError("the keys were derived for another manifest than the snapshot's")
        sender = cls(keys, reader, **options)
        sender.status = SenderStatus(snapshot["status"])
        file_index, chunk_index = (int(x) for x in snapshot["acked"])
        sender._acked = sender._next = sender._checked((file_index, chunk_index))
        sender._delivered = sender._acked[0]
        # Own numbers may have been used after the snapshot: jump past them.
        sender._seq = int(snapshot["seq"]) + SEQ_BLOCK
        sender._peer_seq = int(snapshot["peer_seq"])
        sender.meter.set_done(sender._acked_bytes(), sender._delivered)
        return sender

    # ---------------------------------------------------------------------- queries

    @property
    def in_flight(self) -> int:
        return self._ordinal(self._next) - self._ordinal(self._acked)

    @property
    def position(self) -> tuple[int, int]:
        """Next (file, chunk) to send."""
        return self._next

    @property
    def next_ordinal(self) -> int:
        """The ordinal (across all files) of the next chunk to send: its stream sequence."""
        return self._ordinal(self._next)

    @property
    def acknowledged(self) -> tuple[int, int]:
        return self._acked

    def progress(self) -> Progress:
        return self.meter.snapshot()

    def _ordinal(self, pos: tuple[int, int]) -> int:
        return self._chunks_before[pos[0]] + pos[1]

    def _acked_bytes(self) -> int:
        file_index, chunk_index = self._acked
        if file_index >= len(self.manifest.files):
            return self.manifest.total_size
        within = min(chunk_index * self.manifest.chunk_size, self.manifest.files[file_index].size)
        return self._bytes_before[file_index] + within

    def _checked(self, pos: tuple[int, int]) -> tuple[int, int]:
        file_index, chunk_index = pos
        if pos == self._end:
            return pos
        if not 0 <= file_index < len(self.manifest.files) or not (
            0 <= chunk_index < self.manifest.chunk_count(file_index)
        ):
            raise StateError(f"position (file {file_index}, chunk {chunk_index}) is not in "
                             "this transfer")
        return pos

    # ----------------------------------------------------------------------- output

    def data_to_send(self) -> list[bytes]:
        """Control frames to send to the receiver (cancel)."""
        out, self._outbox = self._outbox, []
        return out

    def next_frame(self, headroom: int = 0, reuse: bytearray | None = None) -> bytearray | None:
        """The next sealed chunk frame, or ``None`` (window full, all sent, or not sending).

        The frame starts after ``headroom`` free bytes (for the transport's header). It is
        sealed into ``reuse`` (a frame this sender made before, which the caller no longer
        needs) when that has the right size, else into a new buffer.

        Raises SourceError (and cancels, see ``data_to_send``) if a file changed since it was
        offered (shorter than announced, or the reader says so). A file's last chunk carries
        its SHA-256 (the final record), which the receiver checks before the file lands.
        """
        if self.status is not SenderStatus.SENDING or self._next >= self._end:
            return None
        if self.in_flight >= self.window_chunks:
            return None
        file_index, chunk_index = self._next
        manifest = self.manifest
        final = self._running_hash(file_index, chunk_index) if manifest.final_record_bytes \
            else None
        data = self._read_chunk(file_index, chunk_index)
        last = chunk_index == manifest.chunk_count(file_index) - 1
        if final is not None:
            final.add(chunk_index, data)
            if last:
                data = bytes(data) + final.digest()
        if self._sealer_index != file_index:
            self._sealer = ChunkSealer(manifest.transfer_id, file_index,
                                       self.keys.file_key(file_index))
            self._sealer_index = file_index
        assert self._sealer is not None
        frame = self._sealer.seal(chunk_index, data, last, headroom, reuse)
        self._next = (file_index + 1, 0) if last else (file_index, chunk_index + 1)
        return frame

    def _read_chunk(self, file_index: int, chunk_index: int) -> bytes | bytearray | memoryview:
        """One chunk's plaintext from the reader; a file that changed fails the transfer."""
        manifest = self.manifest
        length = manifest.chunk_length(file_index, chunk_index)
        try:
            data = self.reader(file_index, chunk_index * manifest.chunk_size, length)
        except SourceError as exc:
            self._fail(str(exc))
        if len(data) != length:
            self._fail(f"{manifest.files[file_index].path!r} is shorter than when it was "
                       "offered (it changed): transfer stopped")
        return data

    def _running_hash(self, file_index: int, chunk_index: int) -> RunningHash:
        """The file's running hash, caught up to this chunk (see :class:`RunningHash`)."""
        if self._hash is None or self._hash.file_index != file_index:
            self._hash = RunningHash(file_index)
        self._hash.catch_up(chunk_index, lambda index: self._read_chunk(file_index, index))
        return self._hash

    def frames(self) -> list[bytearray]:
        """All frames the window allows now (at most ``window_chunks``)."""
        out = []
        while (frame := self.next_frame()) is not None:
            out.append(frame)
        return out

    def retransmit(self) -> list[Event]:
        """Go back to the last acknowledged chunk (call when acks stop for a while).

        Covers chunks lost or destroyed in transit when no later chunk arrives to reveal
        the gap (e.g. the last ones). Chunks the receiver already has are ignored by it.
        """
        if self.status is not SenderStatus.SENDING or self._next == self._acked:
            return []
        self._next = self._acked
        return [Rewound(*self._acked)]

    def _fail(self, message: str) -> None:
        self._queue_cancel(message)
        self.status = SenderStatus.FAILED
        raise SourceError(message)

    # ------------------------------------------------------------------------ input

    def receive_control(self, frame: bytes | bytearray | memoryview) -> list[Event]:
        """Handle a control frame from the receiver (resume point, ack, cancel)."""
        try:
            message = open_control(self.keys, RECEIVER_TO_SENDER, frame)
        except ChunkRejected as exc:
            return [ControlIgnored(str(exc))]
        if message.seq <= self._peer_seq:
            return [ControlIgnored(f"stale or replayed control message (seq {message.seq})")]
        if self.status in (SenderStatus.CANCELLED, SenderStatus.DECLINED, SenderStatus.FAILED):
            return [ControlIgnored(f"transfer is {self.status.value}")]
        body = message.body
        if message.type == "cancel":
            self._peer_seq = message.seq
            self.status = SenderStatus.CANCELLED
            return [Cancelled(clip_reason(body.get("reason", "")), by_peer=True)]
        if message.type not in ("resume", "ack"):
            return [ControlIgnored(f"unknown control message {message.type!r}")]
        try:
            pos = self._checked((int(body["f"]), int(body["n"])))
        except (KeyError, TypeError, ValueError, TransferError) as exc:
            return [ControlIgnored(f"bad position in {message.type}: {exc}")]
        self._peer_seq = message.seq
        events: list[Event] = []
        if message.type == "resume":
            if self.status is SenderStatus.OFFERED:
                self.status = SenderStatus.SENDING
                events.append(Accepted(*pos))
            elif pos != self._next:
                events.append(Rewound(*pos))
            self._next = self._acked = pos
        else:
            if self.status is SenderStatus.OFFERED:  # the accept was lost; an ack implies it
                self.status = SenderStatus.SENDING
                events.append(Accepted(*pos))
            self._acked = max(self._acked, pos)
            self._next = max(self._next, self._acked)
        while self._delivered < self._acked[0]:
            events.append(FileDelivered(self._delivered))
            self._delivered += 1
        events.append(ProgressUpdate(self.meter.set_done(self._acked_bytes(), self._delivered)))
        if self._acked == self._end and self.status is SenderStatus.SENDING:
            self.status = SenderStatus.COMPLETE
            events.append(TransferComplete())
        return events

    # ------------------------------------------------------- group files (upload once)

    def start_upload(self) -> None:
        """A group file: send without waiting for an accept (nobody answers on the
        stream; the relay spools every chunk for each member)."""
        if self.status is SenderStatus.OFFERED:
            self.status = SenderStatus.SENDING

    def upload_confirmed(self, *, final: bool) -> list[Event]:
        """Everything sent so far is durable at the relay (its pong came): that counts as
        acknowledged. Only the ``final`` confirmation (after the ``uploaded`` record)
        completes the upload."""
        if self.status is not SenderStatus.SENDING:
            return []
        self._acked = self._next
        events: list[Event] = []
        while self._delivered < self._acked[0]:
            events.append(FileDelivered(self._delivered))
            self._delivered += 1
        events.append(ProgressUpdate(self.meter.set_done(self._acked_bytes(), self._delivered)))
        if final and self._acked == self._end:
            self.status = SenderStatus.COMPLETE
            events.append(TransferComplete())
        return events

    def uploaded_record(self) -> bytes:
        """The sealed ``uploaded`` control frame that follows a group file's last chunk: a
        receiver still missing chunks then knows they will not come."""
        self._seq += 1
        return seal_control(self.keys, SENDER_TO_RECEIVER, self._seq, "uploaded",
                            n=self._chunks_before[-1])

    def declined(self, reason: str = "declined") -> list[Event]:
        """The recipient declined (an E2EE ``transfer-decline`` message arrived)."""
        if self.status is not SenderStatus.OFFERED:
            return [ControlIgnored(f"decline after the transfer was {self.status.value}")]
        self.status = SenderStatus.DECLINED
        return [Declined(clip_reason(reason))]

    def cancel(self, reason: str = "cancelled by the sender") -> list[Event]:
        """Stop sending and tell the receiver (sealed control frame in ``data_to_send``;
        before acceptance, also send ``control.encode_cancel`` in an E2EE message)."""
        if self.status not in (SenderStatus.OFFERED, SenderStatus.SENDING):
            return []
        self._queue_cancel(reason)
        self.status = SenderStatus.CANCELLED
        return [Cancelled(clip_reason(reason), by_peer=False)]

    def peer_cancelled(self, reason: str) -> list[Event]:
        """The receiver cancelled through an E2EE message (e.g. before accepting)."""
        if self.status not in (SenderStatus.OFFERED, SenderStatus.SENDING):
            return []
        self.status = SenderStatus.CANCELLED
        return [Cancelled(clip_reason(reason), by_peer=True)]

    def _queue_cancel(self, reason: str) -> None:
        self._seq += 1
        self._outbox.append(seal_control(self.keys, SENDER_TO_RECEIVER, self._seq, "cancel",
                                         reason=clip_reason(reason)))
