"""File transfers of one messenger: the thin asyncio layer around client.transfer's cores.

Offer, decline and cancel-before-accept travel as ``transfer`` payloads in end-to-end
encrypted messages (the offer carries the manifest and a fresh 32-byte session transfer
secret, so only the ratchet -- QKD + ML-KEM + X25519 -- protects it). The file keys mix that
secret with fresh QKD keys named in the manifest. Chunks and the small sealed control
frames go as binary frames on a relay file stream whose id is the transfer id; the relay
forwards them live or, when the other side is away, spools them (quota, TTL).

Binary-frame sequence numbers: a chunk's is its ordinal in the transfer (a retransmitted
chunk is the same frame, which the relay's spool keeps once); control frames use numbers
from ``CONTROL_SEQ_BASE`` up, growing with the clock so they never repeat.

Durability: every transfer's record (manifest, secrets, sources, state, the sender's
snapshot) is in the sealed store; the receiver's progress is in its ``.part`` folder. After
a restart, a reconnect or a relay restart, the receiver asks to resume from its position
and the sender goes there. The receiver acknowledges frames to the relay (``stream_ack``)
only after processing them, so the relay never drops a spooled chunk that was not written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client.transfer import (
    Accepted,
    BuiltManifest,
    Cancelled,
    ChunkRefused,
    ControlIgnored,
    FileLanded,
    FileReader,
    IntegrityFailed,
    Manifest,
    PartialStore,
    ProgressMeter,
    ProgressUpdate,
    ReceiverStatus,
    Rewound,
    SenderStatus,
    TransferComplete,
    TransferError,
    TransferKeys,
    TransferReceiver,
    TransferSender,
    build_manifest,
    decode_message,
    encode_cancel,
    encode_decline,
    encode_offer,
)
from client.transfer import Event as CoreEvent
from keysource.mix import QkdRequired
from relay.wire import HEADER_BYTES as BINARY_HEADER_BYTES
from relay.wire import KIND_FILE_CHUNK, BinaryFrame, Error, encode_binary_into

from . import payload as payloads
from .api import MessengerError, TransferEvent, TransferState, TransferView
from .relay_link import RelayError, StreamRefused

if TYPE_CHECKING:
    from .service import MessengerService

log = logging.getLogger(__name__)

CONTROL_SEQ_BASE = 1 << 51  # above any chunk ordinal; + microseconds stays below 2^53
SECRET_BYTES = payloads.TRANSFER_SECRET_BYTES
QKD_KEYS_PER_TRANSFER = 1
UNBOUNDED_WINDOW = 1 << 40  # flow control is the websocket's backpressure, not acks
INCOMING_QUEUE_FRAMES = 32  # chunks waiting for the disk at most (about 8 MiB)
SNAPSHOT_EVERY_S = 1.0
PROGRESS_EVERY_S = 0.25
SEAL_BATCH = 4  # chunks the sender reads and seals per trip to its worker thread (1 MiB)
ACK_EVERY_FRAMES = 16  # the receiver acks at least every 4 MiB even when frames keep coming
IDLE_NUDGE_S = 10.0
KEEP_FINISHED_PROGRESS_S = 7 * 24 * 3600.0  # as long as the relay keeps a spooled frame
WAITING_FOR_RELAY = "waiting for the relay"
SPOOL_FULL = ("the relay's spool for {peer} is full (its quota): the rest follows when {peer} "
              "comes online")
SENDER_QUIET_S = 30.0  # no word from the receiver this long: resend from the last ack
SENDER_QUIET_MAX_S = 3600.0
IDLE_NUDGE_MAX_S = 600.0
AUTO_ACCEPT = ("never", "verified", "all")
_SENDER_STATE = {
    SenderStatus.OFFERED: TransferState.OFFERED,
    SenderStatus.SENDING: TransferState.SENDING,
    SenderStatus.COMPLETE: TransferState.COMPLETE,
    SenderStatus.CANCELLED: TransferState.CANCELLED,
    SenderStatus.DECLINED: TransferState.DECLINED,
    SenderStatus.FAILED: TransferState.FAILED,
}
_RECEIVER_STATE = {
    ReceiverStatus.RECEIVING: TransferState.SENDING,
    ReceiverStatus.COMPLETE: TransferState.COMPLETE,
    ReceiverStatus.CANCELLED: TransferState.CANCELLED,
    ReceiverStatus.FAILED: TransferState.FAILED,
}


def _receive_all(lock: threading.Lock, receiver: TransferReceiver,
                 payloads: list[bytes]) -> list[CoreEvent]:
    """Feed frames to the receiver core in order (on the worker thread); stop at the end."""
    events: list[CoreEvent] = []
    with lock:
        for payload in payloads:
            if receiver.status is not ReceiverStatus.RECEIVING:
                break
            events.extend(receiver.receive_frame(payload))
    return events


def _locked(lock: threading.Lock, call: Callable[..., Any], *args: Any) -> Any:
    with lock:
        return call(*args)


class _Pacer:
    """An optional bandwidth limit for a sender (like rsync's --bwlimit)."""

    def __init__(self, bytes_per_s: float) -> None:
        self.rate = bytes_per_s
        self.start = time.monotonic()
        self.sent_bytes = 0

    async def sent(self, count: int) -> None:
        if self.rate <= 0:
            return
        self.sent_bytes += count
        ahead = self.sent_bytes / self.rate - (time.monotonic() - self.start)
        if ahead > 0:
            await asyncio.sleep(ahead)


class _ControlSeq:
    """Binary sequence numbers for control frames: unique and growing, across restarts."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        self._last = max(self._last + 1, time.time_ns() // 1000)
        return CONTROL_SEQ_BASE + self._last


@dataclass
class _Transfer:
    """Everything the manager tracks about one transfer, in either direction."""

    tid: bytes
    peer: str
    outgoing: bool
    manifest: Manifest
    secret: bytes
    qkd: bytes | None
    state: TransferState
    detail: str = ""
    started_at: float = field(default_factory=time.time)
    sources: list[str] = field(default_factory=list)
    stamps: list[list[int]] = field(default_factory=list)
    snapshot: dict[str, Any] | None = None
    paths: list[str] = field(default_factory=list)
    sender: TransferSender | None = None
    receiver: TransferReceiver | None = None
    meter: ProgressMeter | None = None
    queue: asyncio.Queue[BinaryFrame | None] | None = None
    task: asyncio.Task[None] | None = None
    last_snapshot: float = 0.0
    last_progress: float = 0.0
    done_bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)  # one core call at a time
    limit: float = 0.0  # sender: at most this many bytes per second (0: no limit)
    paused: bool = False  # sender: the relay's spool for the peer is full
    finished_at: float = 0.0  # wall clock when it completed, failed or was cancelled

    @property
    def hex(self) -> str:
        return self.tid.hex()

    def record(self) -> dict[str, Any]:
        return {
            "v": 1, "id": self.tid, "peer": self.peer, "out": self.outgoing,
            "manifest": self.manifest.encode(), "secret": self.secret, "qkd": self.qkd,
            "state": self.state.value, "detail": self.detail, "started": self.started_at,
            "sources": self.sources, "stamps": self.stamps, "snapshot": self.snapshot,
            "paths": self.paths, "done": self.done_bytes, "limit": self.limit,
            "finished": self.finished_at,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> _Transfer:
        return cls(
            tid=record["id"], peer=record["peer"], outgoing=record["out"],
            manifest=Manifest.decode(record["manifest"]), secret=record["secret"],
            qkd=record["qkd"], state=TransferState(record["state"]), detail=record["detail"],
            started_at=record["started"], sources=list(record["sources"]),
            stamps=[list(s) for s in record["stamps"]], snapshot=record["snapshot"],
            paths=list(record["paths"]), done_bytes=int(record.get("done", 0)),
            limit=float(record.get("limit", 0.0)),
            finished_at=float(record.get("finished", 0.0)),
        )


class TransferManager:
    """All file transfers of one messenger; created and driven by MessengerService."""

    def __init__(self, service: MessengerService,
                 emit: Callable[[TransferEvent], None]) -> None:
        self._service = service
        self._emit = emit
        self._transfers: dict[bytes, _Transfer] = {}
        self._control_seq = _ControlSeq()
        self._background: set[asyncio.Future[Any]] = set()
        self._closed = False
        self.sender_quiet_s = SENDER_QUIET_S
        for record in service.store.transfers():
            try:
                item = _Transfer.from_record(record)
            except (KeyError, TypeError, ValueError, TransferError) as exc:
                log.warning("skipped an unreadable transfer record: %s", exc)
                continue
            if item.state is TransferState.WAITING or item.state is TransferState.SENDING:
                item.state = TransferState.WAITING
            self._transfers[item.tid] = item
        self._drop_old_progress_folders()

    def _drop_old_progress_folders(self) -> None:
        """A finished receiver keeps its progress folder (under DOWNLOADS/.qsecret-partial)
        a while, to answer a sender that missed the end; then it goes. The record stays."""
        cutoff = time.time() - KEEP_FINISHED_PROGRESS_S
        for item in self._transfers.values():
            if item.outgoing or not item.state.finished or not item.finished_at:
                continue
            if item.finished_at > cutoff:
                continue
            folder = PartialStore.folder_for(self.downloads, item.tid)
            if not folder.exists():
                continue
            try:
                PartialStore.load(self.downloads, item.tid).remove()
            except (TransferError, OSError, sqlite3.Error) as exc:
                log.warning("could not remove %s: %s", folder, exc)

    # -- settings ---------------------------------------------------------------------

    @property
    def downloads(self) -> Path:
        return self._service.config.downloads_path

    @property
    def auto_accept(self) -> str:
        value = self._service.config.auto_accept
        return value if value in AUTO_ACCEPT else "never"

    # -- views ------------------------------------------------------------------------

    def view(self, item: _Transfer) -> TransferView:
        names: list[str] = []
        for entry in item.manifest.files:
            top = entry.path.split("/", 1)[0]
            if top not in names:
                names.append(top)
        progress = item.meter.snapshot() if item.meter is not None else None
        done = progress.done_bytes if progress is not None else item.done_bytes
        if item.state is TransferState.COMPLETE:
            done = item.manifest.total_size
        return TransferView(
            transfer_id=item.hex, peer=item.peer, outgoing=item.outgoing, names=tuple(names),
            files=len(item.manifest.files), total_bytes=item.manifest.total_size,
            done_bytes=done, state=item.state,
            rate_bytes_per_s=progress.rate_bytes_per_s if progress else 0.0,
            eta_seconds=progress.eta_seconds if progress else None,
            detail=item.detail, started_at=item.started_at, paths=tuple(item.paths),
        )

    def transfers(self) -> list[TransferView]:
        return [self.view(t) for t in sorted(self._transfers.values(),
                                             key=lambda t: t.started_at)]

    def _find(self, transfer_id: str) -> _Transfer:
        try:
            tid = bytes.fromhex(transfer_id)
        except ValueError:
            raise MessengerError(f"{transfer_id!r} is not a transfer id") from None
        item = self._transfers.get(tid)
        if item is None:
            raise MessengerError(f"no transfer {transfer_id}")
        return item

    def _changed(self, item: _Transfer, *, persist: bool = True) -> None:
        if item.meter is not None:
            item.done_bytes = item.meter.done_bytes
        if persist:
            if item.sender is not None:
                item.snapshot = item.sender.snapshot()
                item.last_snapshot = time.monotonic()
            self._service.store.save_transfer(item.hex, item.record())
        self._emit(TransferEvent(self.view(item)))

    def _set(self, item: _Transfer, state: TransferState, detail: str | None = None) -> None:
        item.state = state
        if detail is not None:
            item.detail = detail
        self._changed(item)

    # -- sending ----------------------------------------------------------------------

    async def send_files(self, peer: str, paths: list[str], *,
                         limit_bytes_per_s: float = 0.0) -> TransferView:
        """Hash the files, open the stream, offer them in an E2EE message; sending starts
        when the peer accepts (the task runs in the background)."""
        if not paths:
            raise MessengerError("nothing to send: give at least one file or folder")
        try:
            built = await asyncio.to_thread(build_manifest, paths)
        except TransferError as exc:
            raise MessengerError(str(exc)) from None
        for skipped in built.skipped:
            log.info("not sending %s: %s", skipped.path, skipped.reason)
        return await self.send_built(peer, built, limit_bytes_per_s=limit_bytes_per_s)

    async def send_built(self, peer: str, built: BuiltManifest, *,
                         limit_bytes_per_s: float = 0.0) -> TransferView:
        """Offer an already hashed manifest (``send_files`` builds one from paths)."""
        service = self._service
        if service.store.load_session(peer) is None:
            await service.add_contact(peer)
        session = service.store.load_session(peer)
        if session is None:
            raise MessengerError(f"no session with {peer}")
        qkd = await service.qkd.enc_keys(session.peer_sae_id, QKD_KEYS_PER_TRANSFER)
        manifest = built.manifest
        if qkd is not None:
            manifest = manifest.with_qkd_key_ids(qkd.key_ids)
        secret = os.urandom(SECRET_BYTES)
        material = qkd.material if qkd is not None else None
        try:
            keys = TransferKeys(manifest, secret, material, policy=service.policy)
        except QkdRequired as exc:
            raise MessengerError(
                f"not sent: {exc} ({service.qkd.last_error or 'no QKD keys available'})"
            ) from None
        item = _Transfer(
            tid=manifest.transfer_id, peer=peer, outgoing=True, manifest=manifest,
            secret=secret, qkd=material, state=TransferState.OFFERED,
            sources=[str(Path(p).resolve()) for p in built.sources],
            stamps=[list(s) for s in built.stamps],
        )
        item.limit = limit_bytes_per_s
        item.sender = TransferSender(keys, FileReader(item.sources, built.stamps),
                                     window_chunks=UNBOUNDED_WINDOW)
        item.meter = item.sender.meter
        # Open the stream first: the peer may accept (and answer on it) at once.
        if not service.relay.ready:
            await service.wait_online(10)
        try:
            await service.relay.open_stream(item.tid, peer)
        except StreamRefused as exc:
            raise MessengerError(f"the relay refused the transfer: {exc}") from None
        except RelayError as exc:
            raise MessengerError(f"not sent: {exc}") from None
        self._transfers[item.tid] = item
        self._changed(item)
        try:
            await service.send_transfer_payload(
                peer, payloads.transfer(encode_offer(manifest), secret))
        except MessengerError as exc:
            self._finish(item, TransferState.FAILED)
            raise MessengerError(f"the offer was not sent: {exc}") from None
        self._start(item)
        return self.view(item)

    def _start(self, item: _Transfer) -> None:
        if self._closed or item.state.finished:
            return
        if item.task is not None and not item.task.done():
            return
        if item.queue is None:
            item.queue = asyncio.Queue(0 if item.outgoing else INCOMING_QUEUE_FRAMES)
        runner = self._run_sender if item.outgoing else self._run_receiver
        item.task = asyncio.create_task(self._guard(item, runner), name=f"transfer-{item.hex}")

    async def _guard(self, item: _Transfer, runner: Callable[[_Transfer], Any]) -> None:
        try:
            await runner(item)
        except asyncio.CancelledError:
            raise
        except RelayError as exc:  # the connection dropped: it resumes after the next login
            log.info("transfer %s paused: %s", item.hex[:8], exc)
            if not item.state.finished:
                self._set(item, TransferState.WAITING, WAITING_FOR_RELAY)
        except TransferError as exc:
            log.warning("transfer %s failed: %s", item.hex[:8], exc)
            self._set(item, TransferState.FAILED, str(exc))
        except Exception as exc:  # never let one transfer take the messenger down
            log.exception("transfer %s stopped", item.hex[:8])
            self._set(item, TransferState.FAILED, f"internal error: {type(exc).__name__}")
        finally:
            # Frames nobody will read now would block the relay's read loop: drop them
            # (unacknowledged, so the relay or the resume protocol brings them again).
            while item.queue is not None and not item.queue.empty():
                item.queue.get_nowait()

    def _ensure_sender(self, item: _Transfer) -> TransferSender:
        if item.sender is None:
            keys = TransferKeys(item.manifest, item.secret, item.qkd,
                                policy=self._service.policy)
            reader = FileReader(item.sources, [tuple(s) for s in item.stamps])
            if item.snapshot is not None:
                item.sender = TransferSender.restore(item.snapshot, keys, reader,
                                                     window_chunks=UNBOUNDED_WINDOW)
            else:
                item.sender = TransferSender(keys, reader, window_chunks=UNBOUNDED_WINDOW)
            item.meter = item.sender.meter
        return item.sender

    async def _run_sender(self, item: _Transfer) -> None:
        service = self._service
        sender = self._ensure_sender(item)
        assert item.queue is not None
        # Idempotent: after a restart (ours or the relay's) it finds the stream registered.
        # Nothing is rewound here: the receiver finds any gap and says where to resume.
        await service.relay.open_stream(item.tid, item.peer)
        self._set(item, _SENDER_STATE[sender.status], "")
        pace = _Pacer(item.limit)
        quiet = self.sender_quiet_s
        while True:
            while not item.paused and (frames := await self._next_frames(item, sender)):
                for frame in frames:
                    await service.relay.send_frame(frame)
                    await pace.sent(len(frame) - BINARY_HEADER_BYTES)
                    if item.paused:  # a quota error rewound the core: these are void
                        break
                self._maybe_progress(item)
                if not item.queue.empty():
                    break  # a resume or cancel may change what to send next
            await self._send_controls(item, sender.data_to_send())
            if sender.status not in (SenderStatus.OFFERED, SenderStatus.SENDING):
                break
            try:
                incoming = await asyncio.wait_for(item.queue.get(), quiet)
            except TimeoutError:
                # Nothing from the receiver for a while with chunks unacknowledged (its final
                # ack may have died with a relay): go back to the last ack. The relay's spool
                # keeps one copy of each chunk, so an absent receiver costs no more than this.
                if sender.status is SenderStatus.SENDING:
                    with item.lock:
                        sender.retransmit()
                item.paused = False
                quiet = min(quiet * 2, SENDER_QUIET_MAX_S)
                continue
            if incoming is None:
                return  # the connection dropped; restarted after the next login
            quiet = self.sender_quiet_s
            item.paused = False
            with item.lock:
                events = sender.receive_control(incoming.payload)
            self._on_sender_events(item, events)
        await self._send_controls(item, sender.data_to_send())
        self._finish(item, _SENDER_STATE[sender.status])

    async def _next_frames(self, item: _Transfer, sender: TransferSender) -> list[bytearray]:
        """Up to SEAL_BATCH sealed chunks as relay binary frames (one thread trip)."""
        def read() -> list[bytearray]:
            frames: list[bytearray] = []
            with item.lock:  # the loop may rewind the core (a quota error) meanwhile
                while len(frames) < SEAL_BATCH:
                    ordinal = sender.next_ordinal
                    frame = sender.next_frame(headroom=BINARY_HEADER_BYTES)
                    if frame is None:
                        break
                    encode_binary_into(frame, KIND_FILE_CHUNK, item.tid, ordinal)
                    frames.append(frame)
            return frames
        try:
            return await asyncio.to_thread(read)
        except TransferError as exc:  # a source changed: the core queued a cancel
            await self._send_controls(item, sender.data_to_send())
            item.detail = str(exc)
            raise

    def _on_sender_events(self, item: _Transfer, events: list[CoreEvent]) -> None:
        changed = False
        for event in events:
            if isinstance(event, Accepted):
                item.state, item.detail, changed = TransferState.SENDING, "", True
            elif isinstance(event, Rewound):
                log.info("transfer %s: the receiver asked to resume at file %d chunk %d",
                         item.hex[:8], event.file_index, event.chunk_index)
                if item.state is TransferState.WAITING:
                    item.state, item.detail, changed = TransferState.SENDING, "", True
            elif isinstance(event, Cancelled):
                item.state, item.detail, changed = TransferState.CANCELLED, event.reason, True
            elif isinstance(event, ControlIgnored):
                log.info("transfer %s: ignored a control frame: %s", item.hex[:8], event.reason)
            elif isinstance(event, ProgressUpdate):
                if item.state is TransferState.WAITING:
                    item.state, item.detail, changed = TransferState.SENDING, "", True
        now = time.monotonic()
        if changed or now - item.last_snapshot >= SNAPSHOT_EVERY_S:
            self._changed(item)
        else:
            self._maybe_progress(item)

    async def _send_controls(self, item: _Transfer, frames: list[bytes]) -> None:
        for data in frames:
            await self._service.relay.send_binary(KIND_FILE_CHUNK, item.tid,
                                                  self._control_seq.next(), data)

    def _maybe_progress(self, item: _Transfer) -> None:
        now = time.monotonic()
        if now - item.last_progress >= PROGRESS_EVERY_S:
            item.last_progress = now
            self._changed(item, persist=False)

    def _finish(self, item: _Transfer, state: TransferState) -> None:
        if state is TransferState.COMPLETE and item.paths:
            item.detail = ", ".join(item.paths)
        if state.finished and not item.finished_at:
            item.finished_at = time.time()
        self._set(item, state)
        if item.outgoing and item.sender is not None:
            closer = getattr(item.sender.reader, "close", None)
            if closer is not None:
                closer()
        if state.finished and item.outgoing:
            closing = asyncio.ensure_future(self._close_stream_later(item))
            self._background.add(closing)
            closing.add_done_callback(self._background.discard)

    async def _close_stream_later(self, item: _Transfer) -> None:
        """The sender closes the relay stream once the end is certain (the receiver's last
        ack came, or it cancelled/declined); the receiver never needs to."""
        if not item.outgoing:
            return
        with contextlib.suppress(RelayError):
            await self._service.relay.close_stream(item.tid)

    # -- receiving --------------------------------------------------------------------

    async def on_payload(self, peer: str, body: payloads.Payload) -> None:
        """An E2EE ``transfer`` payload arrived from ``peer``: offer, decline or cancel."""
        try:
            message = decode_message(body.data)
        except TransferError as exc:
            log.warning("dropped a malformed transfer message from %s: %s", peer, exc)
            return
        item = self._transfers.get(message.transfer_id)
        if message.type == "transfer-offer":
            if item is not None:
                return  # a resent offer
            assert message.manifest is not None
            if len(body.secret) != SECRET_BYTES:
                log.warning("dropped a transfer offer from %s without its secret", peer)
                return
            item = _Transfer(tid=message.transfer_id, peer=peer, outgoing=False,
                             manifest=message.manifest, secret=body.secret, qkd=None,
                             state=TransferState.OFFERED)
            self._transfers[item.tid] = item
            self._changed(item)
            if self._should_auto_accept(peer):
                task = asyncio.ensure_future(self._auto_accept(item))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            return
        if item is None or item.peer != peer:
            log.info("a %s from %s for an unknown transfer", message.type, peer)
            return
        if message.type == "transfer-decline" and item.outgoing:
            if item.sender is not None:
                item.sender.declined(message.reason)
            self._stop_task(item)
            item.detail = message.reason
            self._finish(item, TransferState.DECLINED)
        elif message.type == "transfer-cancel" and not item.state.finished:
            if item.receiver is not None:
                with item.lock:
                    item.receiver.cancel(message.reason)
            elif item.sender is not None:
                item.sender.peer_cancelled(message.reason)
            self._stop_task(item)
            item.detail = message.reason
            self._finish(item, TransferState.CANCELLED)

    def _should_auto_accept(self, peer: str) -> bool:
        mode = self.auto_accept
        if mode == "all":
            return True
        if mode == "verified":
            contact = self._service.store.contact(peer)
            return bool(contact and contact.verified)
        return False

    async def _auto_accept(self, item: _Transfer) -> None:
        try:
            await self.accept(item.hex)
        except MessengerError as exc:
            log.warning("could not auto-accept transfer %s: %s", item.hex[:8], exc)

    async def accept(self, transfer_id: str) -> TransferView:
        item = self._find(transfer_id)
        if item.outgoing:
            raise MessengerError("that is your own transfer")
        if item.state is not TransferState.OFFERED:
            raise MessengerError(f"the transfer is {item.state.value}, not waiting for you")
        service = self._service
        ids = item.manifest.qkd_key_ids
        if ids:
            session = service.store.load_session(item.peer)
            if session is None:
                raise MessengerError(f"no session with {item.peer}")
            keys = await service.qkd.dec_keys(session.peer_sae_id, tuple(ids))
            if keys is None:
                raise MessengerError(
                    "the QKD keys of this transfer are not available from your KME yet "
                    f"({service.qkd.last_error or 'try again in a moment'})")
            item.qkd = keys.material
        try:
            keys_ = TransferKeys(item.manifest, item.secret, item.qkd, policy=service.policy)
            self.downloads.mkdir(parents=True, exist_ok=True)
            item.receiver = await asyncio.to_thread(TransferReceiver.accept, keys_,
                                                    self.downloads)
        except QkdRequired as exc:
            raise MessengerError(f"cannot accept: {exc}") from None
        except (TransferError, OSError) as exc:
            raise MessengerError(f"cannot accept: {exc}") from None
        item.meter = item.receiver.meter
        self._set(item, TransferState.SENDING, "")
        self._start(item)
        return self.view(item)

    async def decline(self, transfer_id: str, reason: str = "declined") -> None:
        item = self._find(transfer_id)
        if item.outgoing or item.state is not TransferState.OFFERED:
            raise MessengerError("only an offer waiting for you can be declined")
        await self._service.send_transfer_payload(item.peer, payloads.transfer(
            encode_decline(item.tid, reason)))
        self._set(item, TransferState.DECLINED, reason)

    async def cancel(self, transfer_id: str) -> None:
        item = self._find(transfer_id)
        if item.state.finished:
            raise MessengerError(f"the transfer is already {item.state.value}")
        reason = "cancelled by " + self._service.handle
        if item.outgoing:
            sender = self._ensure_sender(item)
            with item.lock:
                sender.cancel(reason)
            with contextlib.suppress(RelayError):
                await self._send_controls(item, sender.data_to_send())
        elif item.receiver is not None:
            with item.lock:
                item.receiver.cancel(reason)
            with contextlib.suppress(RelayError):
                await self._send_controls(item, item.receiver.data_to_send())
        # Also in an E2EE message: the peer may not have accepted (or be online) yet.
        with contextlib.suppress(MessengerError):
            await self._service.send_transfer_payload(item.peer, payloads.transfer(
                encode_cancel(item.tid, reason)))
        self._stop_task(item)
        item.detail = reason
        self._finish(item, TransferState.CANCELLED)

    def _stop_task(self, item: _Transfer) -> None:
        if item.task is not None and item.task is not asyncio.current_task():
            item.task.cancel()
        item.task = None

    def _ensure_receiver(self, item: _Transfer) -> TransferReceiver:
        if item.receiver is None:
            keys = TransferKeys(item.manifest, item.secret, item.qkd,
                                policy=self._service.policy)
            item.receiver = TransferReceiver.resume(keys, self.downloads)
            item.meter = item.receiver.meter
        return item.receiver

    async def _run_receiver(self, item: _Transfer) -> None:
        service = self._service
        receiver = await asyncio.to_thread(self._ensure_receiver, item)
        assert item.queue is not None
        if item.state is TransferState.WAITING:
            receiver.request_resume()
            self._set(item, TransferState.SENDING, "")
        relay_acks: list[int] = []
        nudge = IDLE_NUDGE_S
        unanswered = 0
        while receiver.status is ReceiverStatus.RECEIVING:
            if item.queue.empty() or unanswered >= ACK_EVERY_FRAMES:
                # Acks are cumulative: one for every frame drained since the last one. The
                # core saves its position first; only then may the relay drop its copies.
                await self._send_controls(item, receiver.data_to_send())
                unanswered = 0
                if relay_acks:
                    await service.relay.stream_ack(item.tid, relay_acks)
                    relay_acks.clear()
            try:
                frame = await asyncio.wait_for(item.queue.get(), nudge)
            except TimeoutError:
                receiver.request_resume()  # nudge a sender that lost our acks or chunks
                nudge = min(nudge * 2, IDLE_NUDGE_MAX_S)
                continue
            if frame is None:
                return
            nudge = IDLE_NUDGE_S
            # Whatever else is already waiting goes to the worker thread in the same trip
            # (one thread hand-off per batch, not per chunk).
            batch = [frame]
            while len(batch) < ACK_EVERY_FRAMES - unanswered and not item.queue.empty():
                more = item.queue.get_nowait()
                if more is None:
                    break
                batch.append(more)
            events = await asyncio.to_thread(_receive_all, item.lock, receiver,
                                             [f.payload for f in batch])
            relay_acks.extend(f.seq for f in batch)
            unanswered += len(batch)
            self._on_receiver_events(item, events)
        await self._send_controls(item, receiver.data_to_send())
        if relay_acks:
            await service.relay.stream_ack(item.tid, relay_acks)
        self._finish(item, _RECEIVER_STATE[receiver.status])

    def _on_receiver_events(self, item: _Transfer, events: list[CoreEvent]) -> None:
        changed = False
        if item.state is TransferState.WAITING:
            item.state, item.detail, changed = TransferState.SENDING, "", True
        for event in events:
            if isinstance(event, FileLanded):
                item.paths.append(str(event.path))
                changed = True
            elif isinstance(event, ChunkRefused):
                log.warning("transfer %s: refused a chunk: %s", item.hex[:8], event.reason)
            elif isinstance(event, IntegrityFailed):
                log.warning("transfer %s: file %d failed its SHA-256 check%s", item.hex[:8],
                            event.file_index, "; asking again" if event.retrying else "")
            elif isinstance(event, Cancelled):
                item.state, item.detail, changed = TransferState.CANCELLED, event.reason, True
            elif isinstance(event, TransferComplete):
                changed = True
        if changed:
            self._changed(item)
        else:
            self._maybe_progress(item)

    # -- relay side -------------------------------------------------------------------

    async def on_binary(self, frame: BinaryFrame) -> None:
        """A binary frame for one of our streams (from the relay's read loop)."""
        item = self._transfers.get(frame.stream)
        if item is None or item.state.finished:
            if item is not None and not item.outgoing:
                await self._after_the_end(item, frame)
            return
        if item.queue is None or item.task is None or item.task.done():
            if item.state is TransferState.OFFERED and not item.outgoing:
                return  # not accepted yet: the relay keeps it until we ack
            self._start(item)
        assert item.queue is not None
        await item.queue.put(frame)  # bounded for receivers: the disk sets the pace

    async def _after_the_end(self, item: _Transfer, frame: BinaryFrame) -> None:
        """A frame for a transfer that ended here: a complete receiver repeats its final
        ack (the sender may have missed it); the relay may drop its copy either way."""
        try:
            if item.state is TransferState.COMPLETE:
                receiver = await asyncio.to_thread(self._ensure_receiver, item)
                await asyncio.to_thread(_locked, item.lock, receiver.receive_frame,
                                        frame.payload)
                await self._send_controls(item, receiver.data_to_send())
            await self._service.relay.stream_ack(frame.stream, [frame.seq])
        except RelayError:
            pass  # offline: the frame comes again after the next login
        except TransferError as exc:  # e.g. its progress folder was deleted by hand
            log.warning("transfer %s: cannot answer a late frame: %s", item.hex[:8], exc)

    def on_error(self, error: Error) -> bool:
        """A relay error about one of our streams; True when it was ours."""
        stream_hex = getattr(error, "stream", None)
        if not stream_hex:
            return False
        item = self._transfers.get(bytes.fromhex(stream_hex))
        if item is None:
            return False
        if error.code == "quota_exceeded":
            if item.sender is not None:
                # Stop sending into a full spool; go on from the last ack once the receiver
                # speaks again (it drained the spool) or after a quiet while.
                item.paused = True
                with item.lock:
                    item.sender.retransmit()
            if item.state is not TransferState.WAITING or item.detail != SPOOL_FULL.format(
                    peer=item.peer):
                log.info("transfer %s: %s", item.hex[:8], error.message)
                self._set(item, TransferState.WAITING, SPOOL_FULL.format(peer=item.peer))
        else:
            log.info("relay error %s on transfer %s: %s", error.code, item.hex[:8],
                     error.message)
            item.detail = error.message
            self._changed(item, persist=False)
        return True

    def on_ready(self) -> None:
        """Logged in (again): restart the transfers whose task stopped (a failed write);
        those still running just show that the relay is back."""
        for item in self._transfers.values():
            if item.state.finished or (item.state is TransferState.OFFERED
                                       and not item.outgoing):
                continue
            if item.task is not None and not item.task.done():
                if item.state is TransferState.WAITING and item.detail == WAITING_FOR_RELAY:
                    state = TransferState.SENDING
                    if item.sender is not None:
                        state = _SENDER_STATE[item.sender.status]
                    item.state, item.detail = state, ""
                    self._changed(item, persist=False)
                continue
            self._start(item)

    def on_disconnect(self) -> None:
        """The relay connection dropped: running transfers show it and pause by themselves."""
        for item in self._transfers.values():
            if item.state in (TransferState.SENDING, TransferState.OFFERED) and item.outgoing \
                    or item.state is TransferState.SENDING:
                item.state, item.detail = TransferState.WAITING, WAITING_FOR_RELAY
                self._changed(item, persist=False)

    async def close(self) -> None:
        self._closed = True
        for item in self._transfers.values():
            if item.task is not None:
                item.task.cancel()
        for item in self._transfers.values():
            if item.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await item.task
            if item.sender is not None and not item.state.finished:
                item.snapshot = item.sender.snapshot()
                self._service.store.save_transfer(item.hex, item.record())
            if item.receiver is not None:
                item.receiver.close()
            if item.sender is not None:
                closer = getattr(item.sender.reader, "close", None)
                if closer is not None:
                    closer()
