"""The receiving state machine: verify, order, write, persist, acknowledge, land.

Sans-I/O towards the network (``receive_frame`` takes bytes, ``data_to_send`` returns control
frames), while the disk side is the ``PartialStore``. Chunks must arrive in order, file after
file. Each one is authenticated before anything is written; then:

* the next expected chunk is written to the ``.part`` file, progress persisted, then acked;
* a chunk that is already written is a replay: ignored (idempotent), reported, re-acked;
* a chunk ahead of the expected one is refused as out-of-order and a resume point is sent
  (once per position), so the sender rewinds -- nothing is lost;
* a tampered chunk is refused (TamperedChunk), changes nothing, and a resume point is sent
  (once per position) in case the genuine chunk was lost with it.

After a file's last chunk the SHA-256 of what was written is compared with the one in the
sender's sealed final record (the end of the last chunk; in a version-1 manifest, the one the
offer listed); on a match the part file is renamed into place, on a mismatch the file is
restarted once from chunk 0, then failed.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable
from pathlib import Path

from .control import clip_reason, open_control, seal_control
from .errors import (
    ChunkRejected,
    MalformedFrame,
    OutOfOrderChunk,
    ReplayedChunk,
    StateError,
    TamperedChunk,
    TransferError,
    TruncatedStream,
)
from .events import (
    Cancelled,
    ChunkRefused,
    ChunkStored,
    ControlIgnored,
    Event,
    FileLanded,
    IntegrityFailed,
    ProgressUpdate,
    TransferComplete,
)
from .keys import RECEIVER_TO_SENDER, SENDER_TO_RECEIVER, TransferKeys
from .manifest import Manifest
from .names import OnConflict
from .partial import PartialStore, Position
from .progress import Progress, ProgressMeter
from .stream import KIND_CHUNK, KIND_CONTROL, ChunkOpener, frame_kind, parse_chunk_header

MAX_INTEGRITY_RETRIES = 1
SEQ_BLOCK = 1024  # control sequence numbers reserved per database write


class ReceiverStatus(enum.Enum):
    RECEIVING = "receiving"
    COMPLETE = "complete"
    CANCELLED = "cancelled"
    FAILED = "failed"


class TransferReceiver:
    """One incoming transfer. Create with ``accept`` (new) or ``resume`` (after a restart)."""

    def __init__(self, keys: TransferKeys, store: PartialStore,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if keys.manifest.encode() != store.manifest.encode():
            raise StateError("the keys were derived for another manifest than the stored one")
        self.keys = keys
        self.manifest = keys.manifest
        self.store = store
        self.status = ReceiverStatus(store.status)
        self._outbox: list[bytes] = []
        self._seq, self._peer_seq = store.seqs()
        self._seq_reserved = self._seq
        self._pos = store.position()
        self._last_resume_sent: tuple[int, int] | None = None
        self._ack_due: tuple[int, int] | None = None
        self._gap_seen = False  # a chunk came early since the last one stored in order
        self._buffer = bytearray(self.manifest.chunk_size + self.manifest.final_record_bytes)
        self._opener: ChunkOpener | None = None
        self._digest = None
        self._prefix_bytes = [0]
        for entry in self.manifest.files:
            self._prefix_bytes.append(self._prefix_bytes[-1] + entry.size)
        self.meter = ProgressMeter(self.manifest.total_size, len(self.manifest.files), clock)
        self.meter.set_done(self._done_bytes(), self._pos.file_index)
        if self.status is ReceiverStatus.RECEIVING:
            self._open_file()

    # ------------------------------------------------------------------ construction

    @classmethod
    def accept(cls, keys: TransferKeys, downloads: str | os.PathLike[str],
               on_conflict: OnConflict = OnConflict.RENAME,
               clock: Callable[[], float] = time.monotonic) -> TransferReceiver:
        """Accept the offer: prepare the downloads folder and queue the accept (resume 0/0)."""
        store = PartialStore.create(downloads, keys.manifest, on_conflict)
        receiver = cls(keys, store, clock)
        receiver.request_resume()
        return receiver

    @classmethod
    def resume(cls, keys: TransferKeys, downloads: str | os.PathLike[str],
               clock: Callable[[], float] = time.monotonic) -> TransferReceiver:
        """Reopen after a restart or reconnect and queue the persisted resume point."""
        store = PartialStore.load(downloads, keys.manifest.transfer_id)
        receiver = cls(keys, store, clock)
        if receiver.status is ReceiverStatus.RECEIVING:
            receiver.request_resume()
        elif receiver.status is ReceiverStatus.COMPLETE:
            receiver._send_final_ack()  # the sender may have missed it
        return receiver

    def _send_final_ack(self) -> None:
        self._ack(len(self.manifest.files), 0)

    @staticmethod
    def stored_manifest(downloads: str | os.PathLike[str], transfer_id: bytes) -> Manifest:
        """The manifest of a persisted transfer, to re-derive its keys before ``resume``."""
        store = PartialStore.load(downloads, transfer_id)
        try:
            return store.manifest
        finally:
            store.close()

    @staticmethod
    def pending(downloads: str | os.PathLike[str]) -> list[bytes]:
        """IDs of transfers persisted in this downloads folder (resume them on start-up)."""
        return PartialStore.pending(downloads)

    # ----------------------------------------------------------------------- outbox

    def _ack(self, file_index: int, chunk_index: int) -> None:
        """Acks are cumulative: only the newest is sealed, when ``data_to_send`` is called,
        so an I/O layer that drains several chunks at once sends one ack (and saves the
        position once) for them."""
        self._ack_due = (file_index, chunk_index)

    def data_to_send(self) -> list[bytes]:
        """Control frames to send to the sender (acks, resume points, cancel), in order."""
        if self._ack_due is not None:
            file_index, chunk_index = self._ack_due
            self._ack_due = None
            if self.status is ReceiverStatus.RECEIVING:
                # Never acknowledge more than is on record: after a crash the receiver
                # resumes from the saved position (the .part file is cut back to it).
                self.store.save_position(self._pos)
            self._send("ack", f=file_index, n=chunk_index)
        out, self._outbox = self._outbox, []
        return out

    def _send(self, type_: str, **fields: object) -> None:
        self._seq += 1
        if self._seq >= self._seq_reserved:
            self._seq_reserved = self._seq + SEQ_BLOCK
            self.store.reserve_seqs(self._seq_reserved)
        self._outbox.append(seal_control(self.keys, RECEIVER_TO_SENDER, self._seq, type_,
                                         **fields))

    def request_resume(self) -> None:
        """Queue "send from my position" (on accept, reconnect, or after a gap)."""
        if self.status is not ReceiverStatus.RECEIVING:
            return
        self._send("resume", f=self._pos.file_index, n=self._pos.chunk_index)

    def _ask_resume_once(self) -> None:
        """Ask for a resend from here, once per position (the sender's timeout covers more)."""
        here = (self._pos.file_index, self._pos.chunk_index)
        if self._last_resume_sent != here:
            self._last_resume_sent = here
            self.request_resume()

    # ----------------------------------------------------------------------- state

    @property
    def position(self) -> tuple[int, int]:
        return self._pos.file_index, self._pos.chunk_index

    def progress(self) -> Progress:
        return self.meter.snapshot()

    def landed(self) -> dict[int, Path]:
        return self.store.landed_paths()

    def _done_bytes(self) -> int:
        if self._pos.file_index >= len(self.manifest.files):
            return self.manifest.total_size
        within = min(self._pos.chunk_index * self.manifest.chunk_size,
                     self.manifest.files[self._pos.file_index].size)
        return self._prefix_bytes[self._pos.file_index] + within

    def _open_file(self) -> None:
        index = self._pos.file_index
        if index >= len(self.manifest.files):
            self._opener = None
            return
        self._opener = ChunkOpener(self.manifest.transfer_id, index, self.keys.file_key(index))
        self._digest = self.store.prepare(index, self._pos.chunk_index)

    # ----------------------------------------------------------------------- input

    def receive_frame(self, frame: bytes | bytearray | memoryview) -> list[Event]:
        """Handle one binary transfer frame from the sender (a chunk or a control frame)."""
        try:
            kind = frame_kind(frame)
            if kind == KIND_CONTROL:
                return self._receive_control(frame)
            if kind != KIND_CHUNK:
                raise MalformedFrame(f"unknown transfer frame kind {kind}")
            return self._receive_chunk(frame)
        except ChunkRejected as exc:
            return [ChunkRefused(exc)]

    def _receive_control(self, frame: bytes | bytearray | memoryview) -> list[Event]:
        message = open_control(self.keys, SENDER_TO_RECEIVER, frame)
        if message.seq <= self._peer_seq:
            return [ControlIgnored(f"stale or replayed control message (seq {message.seq})")]
        if (message.type == "uploaded" and self.status is ReceiverStatus.RECEIVING
                and self._gap_seen):
            # The missing chunks may still come (a spool rewind brings them, and this record
            # again after them): not consumed, so that copy is taken and not a replay.
            raise OutOfOrderChunk(
                f"the end of the upload came before chunk {self._pos.chunk_index} of "
                f"file #{self._pos.file_index}: waiting for the missing chunks")
        self._peer_seq = message.seq
        self.store.save_peer_seq(self._peer_seq)
        if message.type == "cancel":
            return self._cancelled(clip_reason(message.body.get("reason", "")), by_peer=True)
        if message.type == "uploaded":
            if self.status is not ReceiverStatus.RECEIVING:
                return [ControlIgnored(f"end of upload after the transfer was "
                                       f"{self.status.value}")]
            self.fail()
            raise TruncatedStream(
                f"truncated: the sender's upload ended, but chunk {self._pos.chunk_index} "
                f"of file #{self._pos.file_index} and what follows never came; nothing of "
                "the unfinished files was saved")
        return [ControlIgnored(f"unknown control message {message.type!r}")]

    def _receive_chunk(self, frame: bytes | bytearray | memoryview) -> list[Event]:
        if self.status is ReceiverStatus.COMPLETE:
            self._send_final_ack()
            raise ReplayedChunk("chunk after the transfer completed: ignored (replay)")
        if self.status is not ReceiverStatus.RECEIVING:
            raise MalformedFrame(f"transfer is {self.status.value}: no more chunks accepted")
        header = parse_chunk_header(frame)
        manifest = self.manifest
        if header.transfer_id != manifest.transfer_id:
            raise TamperedChunk("chunk belongs to another transfer")
        if header.file_index >= len(manifest.files):
            raise MalformedFrame(f"chunk names file #{header.file_index}, which is not offered")
        count = manifest.chunk_count(header.file_index)
        if header.chunk_index >= count:
            raise MalformedFrame(f"chunk {header.chunk_index} beyond the file's {count} chunks")
        if header.file_index == self._pos.file_index and self._opener is not None:
            opener = self._opener
        else:  # authenticate first, so only genuine chunks are called replays or gaps
            opener = ChunkOpener(manifest.transfer_id, header.file_index,
                                 self.keys.file_key(header.file_index))
        out = memoryview(self._buffer)
        try:
            length = opener.open_into(frame, header, out)
        except TamperedChunk:
            self._ask_resume_once()  # the genuine chunk may have been lost with it
            raise
        if header.last != (header.chunk_index == count - 1):
            raise TamperedChunk("last-chunk flag does not match the manifest")
        final_bytes = manifest.final_record_bytes if header.last else 0
        if length != manifest.chunk_length(header.file_index, header.chunk_index) + final_bytes:
            raise TamperedChunk("chunk length does not match the manifest")
        here = (self._pos.file_index, self._pos.chunk_index)
        there = (header.file_index, header.chunk_index)
        if there < here:
            self._ack(*here)
            raise ReplayedChunk(
                f"chunk {there[1]} of file #{there[0]} was already written: ignored (replay)")
        if there > here:
            self._gap_seen = True
            self._ask_resume_once()
            raise OutOfOrderChunk(
                f"chunk {there[1]} of file #{there[0]} arrived before chunk {here[1]} of file "
                f"#{here[0]}: refused, asked the sender to resume from there")
        data_end = length - final_bytes
        return self._store_chunk(header.file_index, header.chunk_index, out[:data_end],
                                 bytes(out[data_end:length]))

    def _store_chunk(self, file_index: int, chunk_index: int, data: memoryview,
                     final_record: bytes) -> list[Event]:
        self._gap_seen = False
        self.store.write(file_index, chunk_index * self.manifest.chunk_size, data)
        assert self._digest is not None
        self._digest.update(data)
        self._pos.chunk_index += 1
        events: list[Event] = [ChunkStored(file_index, chunk_index)]
        if self._pos.chunk_index < self.manifest.chunk_count(file_index):
            self._ack(file_index, self._pos.chunk_index)  # persisted when the ack is sealed
        else:
            events.extend(self._finish_file(file_index, final_record))
        events.append(ProgressUpdate(self.meter.set_done(self._done_bytes(),
                                                         self._pos.file_index)))
        return events

    def _finish_file(self, file_index: int, final_record: bytes) -> list[Event]:
        """The last chunk is written: land the file if its SHA-256 is the sender's."""
        assert self._digest is not None
        expected = self.manifest.files[file_index].sha256 or final_record
        if self._digest.digest() != expected:
            failures = self.store.record_failure(file_index)
            retrying = failures <= MAX_INTEGRITY_RETRIES
            events: list[Event] = [IntegrityFailed(file_index, retrying)]
            if retrying:
                self._pos.chunk_index = 0
                self.store.save_position(self._pos)
                self._digest = self.store.prepare(file_index, 0)
                self.request_resume()
            else:
                events.extend(self.cancel(
                    f"file #{file_index} failed its SHA-256 check twice (what was written is not "
                    "what the sender read): it changed on the sender's side or was damaged; "
                    "not saved"))
                self.status = ReceiverStatus.FAILED
                self.store.set_status(self.status.value)
            return events
        path, renamed = self.store.land(file_index)
        self._pos = Position(file_index + 1, 0)
        events = [FileLanded(file_index, path, renamed)]
        if self._pos.file_index >= len(self.manifest.files):
            self.status = ReceiverStatus.COMPLETE
            self.store.set_status(self.status.value)
            self._opener = None
            events.append(TransferComplete())
        else:
            self._open_file()
        self._ack(self._pos.file_index, 0)
        return events

    # ----------------------------------------------------------------------- cancel

    def cancel(self, reason: str = "cancelled by the recipient") -> list[Event]:
        """Stop receiving, tell the sender, delete partial files (landed files stay)."""
        if self.status is not ReceiverStatus.RECEIVING:
            return []
        self._send("cancel", reason=clip_reason(reason))
        return self._cancelled(reason, by_peer=False)

    def _cancelled(self, reason: str, *, by_peer: bool) -> list[Event]:
        if self.status is not ReceiverStatus.RECEIVING:
            return [ControlIgnored(f"cancel after the transfer was {self.status.value}")]
        self.status = ReceiverStatus.CANCELLED
        self.store.set_status(self.status.value)
        self.store.discard_parts()
        self._opener = None
        return [Cancelled(reason, by_peer)]

    def fail(self) -> None:
        """Give up (a group file that cannot be completed): partial files are deleted,
        landed ones stay; nothing goes to the sender."""
        if self.status is ReceiverStatus.RECEIVING:
            self.status = ReceiverStatus.FAILED
            self.store.set_status(self.status.value)
            self.store.discard_parts()
            self._opener = None

    def close(self) -> None:
        """Release the file handle and database (the persisted state stays for resume)."""
        self.store.close()

    def forget(self) -> None:
        """Delete the persisted state (once the sender has seen completion or cancel)."""
        if self.status is ReceiverStatus.RECEIVING:
            raise StateError("cancel the transfer before forgetting it")
        self.store.discard_parts()
        self.store.remove()


def describe(error: TransferError) -> str:
    """One line for the user."""
    return f"{type(error).__name__}: {error}"
