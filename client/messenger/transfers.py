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

Group files (``send_files("@GROUP", ...)``): the offer (manifest, the group's ID and a fresh
secret) goes to each member through the pairwise session, so the secret rides that
session's QKD + ML-KEM + X25519 keys; the chunks are sealed once under keys mixed from that
secret and uploaded once on a group file stream, which the relay spools for every member.
Nothing comes back on the stream: the sender is done once the relay holds everything (a
ping's pong) and the sealed ``uploaded`` record follows the last chunk. A member checks the
offer's sender and itself against the group's roster; a chunk that fails authentication, a
hash mismatch or a stream that ends short fails that member's copy (partial files deleted).

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
from typing import Any, Protocol

from client.transfer import (
    Accepted,
    BuiltManifest,
    Cancelled,
    ChunkRefused,
    ControlIgnored,
    FileLanded,
    FileReader,
    IntegrityFailed,
    MalformedFrame,
    Manifest,
    OutdatedOffer,
    PartialStore,
    ProgressMeter,
    ProgressUpdate,
    ReceiverStatus,
    Rewound,
    SenderStatus,
    TamperedChunk,
    TransferComplete,
    TransferError,
    TransferKeys,
    TransferReceiver,
    TransferSender,
    build_manifest,
    decode_message,
    encode_cancel,
    encode_decline,
    encode_group_offer,
    encode_offer,
)
from client.transfer import Event as CoreEvent
from client.transfer.driver import Incoming, ReceiverDriver, SenderDriver, UploadDriver
from keysource.mix import QkdPolicy, QkdRequired
from relay.wire import HEADER_BYTES as BINARY_HEADER_BYTES
from relay.wire import KIND_FILE_CHUNK, BinaryFrame, Error, encode_binary_into
from relay.wire.errors import QUOTA_CODES

from . import payload as payloads
from .api import (
    ConversationId,
    GroupView,
    MessengerError,
    TransferEvent,
    TransferState,
    TransferView,
)
from .relay_link import RelayError, StreamRefused
from .sessions import KeySource
from .ws_frames import WS_HEADROOM

log = logging.getLogger(__name__)

CONTROL_SEQ_BASE = 1 << 51  # above any chunk ordinal; + microseconds stays below 2^53
SECRET_BYTES = payloads.TRANSFER_SECRET_BYTES
QKD_KEYS_PER_TRANSFER = 1
UNBOUNDED_WINDOW = 1 << 40  # flow control is the websocket's backpressure, not acks
INCOMING_QUEUE_FRAMES = 32  # chunks waiting for the disk at most (about 8 MiB)
SNAPSHOT_EVERY_S = 1.0
UPLOAD_CONFIRM_EVERY = 4  # group file chunks between two relay barriers (progress, resume)
RELAY_READY_S = 10.0  # how long an offer waits for the relay login by default
PROGRESS_EVERY_S = 0.25
IDLE_NUDGE_S = 10.0
KEEP_FINISHED_PROGRESS_S = 7 * 24 * 3600.0  # as long as the relay keeps a spooled frame
WAITING_FOR_RELAY = "waiting for the relay"
SPOOL_FULL = ("the relay's spool for {peer} is full (its quota): the rest follows when {peer} "
              "comes online")
SPOOL_FULL_BY_CODE = {  # other quota refusals (relay.wire.errors.QUOTA_CODES), same pause
    "share_exceeded": "your share of the relay's spool for {peer} is full: the rest follows "
                      "when {peer} comes online",
    "store_full": "the relay's store is full: the rest follows when {peer} comes online",
}
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
    queue: asyncio.Queue[Incoming | None] | None = None
    task: asyncio.Task[None] | None = None
    last_snapshot: float = 0.0
    last_progress: float = 0.0
    done_bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)  # one core call at a time
    limit: float = 0.0  # sender: at most this many bytes per second (0: no limit)
    driver: SenderDriver | None = None  # sender: the running driver (a quota error pauses it)
    finished_at: float = 0.0  # wall clock when it completed, failed or was cancelled
    group: str = ""  # a group file: the group's ID (hex)
    group_name: str = ""
    recipients: list[str] = field(default_factory=list)  # a group file's sender: members

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
            "finished": self.finished_at, "group": self.group, "group_name": self.group_name,
            "recipients": self.recipients,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> _Transfer:
        return cls(
            tid=record["id"], peer=record["peer"], outgoing=record["out"],
            manifest=Manifest.decode(record["manifest"], stored=True), secret=record["secret"],
            qkd=record["qkd"], state=TransferState(record["state"]), detail=record["detail"],
            started_at=record["started"], sources=list(record["sources"]),
            stamps=[list(s) for s in record["stamps"]], snapshot=record["snapshot"],
            paths=list(record["paths"]), done_bytes=int(record.get("done", 0)),
            limit=float(record.get("limit", 0.0)),
            finished_at=float(record.get("finished", 0.0)),
            group=str(record.get("group", "")), group_name=str(record.get("group_name", "")),
            recipients=list(record.get("recipients", [])),
        )


class TransferStore(Protocol):
    """Transfer records in the sealed store (client.store.Store)."""

    def transfers(self) -> list[dict[str, Any]]: ...
    def save_transfer(self, transfer_id: str, record: dict[str, Any]) -> None: ...
    def claim_transfer(self, transfer_id: str, expected_state: str,
                       record: dict[str, Any]) -> dict[str, Any] | None: ...


class StreamRelay(Protocol):
    """The relay's file streams (client.messenger.relay_link.RelayLink)."""

    @property
    def ready(self) -> bool: ...
    async def wait_ready(self, timeout: float) -> None: ...
    async def open_stream(self, stream: bytes, to: str, kind: str = "file") -> None: ...
    async def open_group_stream(self, stream: bytes, to: tuple[str, ...]) -> None: ...
    async def barrier(self) -> None: ...
    async def spool_rewind(self) -> None: ...
    async def close_stream(self, stream: bytes) -> None: ...
    async def send_frame(self, frame: bytearray, headroom: int = 0) -> None: ...
    async def send_binary(self, kind: int, stream: bytes, seq: int, payload: bytes) -> None: ...
    async def stream_ack(self, stream: bytes, seqs: list[int]) -> None: ...


class Conversations(Protocol):
    """What transfers need of the conversations they belong to."""

    def peer_sae_id(self, conversation: ConversationId) -> str | None: ...
    async def ensure_session(self, conversation: ConversationId) -> str: ...
    def verified(self, conversation: ConversationId) -> bool: ...
    def group(self, name_or_id: str) -> GroupView: ...
    async def send_transfer_message(self, conversation: ConversationId,
                                    body: payloads.TransferMessage, *,
                                    wait: bool = False) -> None: ...


@dataclass(frozen=True)
class TransferSettings:
    handle: str
    downloads: Path
    auto_accept: str
    policy: QkdPolicy


class _Stages:
    """How long each step of an offer took (QSECRET_LOG=info shows them: the time before
    the first chunk is on a transfer's clock)."""

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self._parts: list[str] = []

    def done(self, stage: str) -> None:
        now = time.perf_counter()
        self._parts.append(f"{stage} {1000 * (now - self._last):.1f} ms")
        self._last = now

    def __str__(self) -> str:
        return ", ".join(self._parts)


class _StreamLink:
    """A driver's frame link over one relay file stream (client.transfer.driver.FrameLink)."""

    headroom = WS_HEADROOM + BINARY_HEADER_BYTES  # the websocket's header, then the relay's

    def __init__(self, relay: StreamRelay, stream: bytes, control_seq: _ControlSeq) -> None:
        self._relay = relay
        self._stream = stream
        self._control_seq = control_seq

    def frame_chunk(self, frame: bytearray, ordinal: int) -> None:
        encode_binary_into(memoryview(frame)[WS_HEADROOM:], KIND_FILE_CHUNK, self._stream,
                           ordinal)

    async def send_chunk(self, frame: bytearray) -> None:
        await self._relay.send_frame(frame, WS_HEADROOM)

    async def send_control(self, data: bytes) -> None:
        await self._relay.send_binary(KIND_FILE_CHUNK, self._stream, self._control_seq.next(),
                                      data)

    async def ack(self, seqs: list[int]) -> None:
        await self._relay.stream_ack(self._stream, seqs)


class _GroupReceiveLink(_StreamLink):
    """A group file's receiving end: acks go to the relay (they delete this member's
    copies), control frames go nowhere (the sender does not listen on the stream)."""

    async def send_control(self, data: bytes) -> None:
        return None


class _ItemObserver:
    """Turns a driver's reports into this manager's state changes for one transfer."""

    def __init__(self, manager: TransferManager, item: _Transfer) -> None:
        self._manager = manager
        self._item = item

    def events(self, events: list[CoreEvent]) -> None:
        if self._item.outgoing:
            self._manager._on_sender_events(self._item, events)
        else:
            self._manager._on_receiver_events(self._item, events)

    def progress(self) -> None:
        self._manager._maybe_progress(self._item)


class TransferManager:
    """All file transfers of one messenger. It knows the rest of the messenger only through
    the narrow interfaces above (no back-reference to the service)."""

    def __init__(self, settings: TransferSettings, store: TransferStore, relay: StreamRelay,
                 qkd: KeySource, conversations: Conversations,
                 emit: Callable[[TransferEvent], None]) -> None:
        self._settings = settings
        self._store = store
        self._relay = relay
        self._qkd = qkd
        self._conversations = conversations
        self._emit = emit
        self._transfers: dict[bytes, _Transfer] = {}
        self._control_seq = _ControlSeq()
        self._background: set[asyncio.Future[Any]] = set()
        self._closed = False
        self._dropped_frames = False  # frames dropped unacked: rewind the spool on accept
        self.sender_quiet_s = SENDER_QUIET_S
        for record in store.transfers():
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
        return self._settings.downloads

    @property
    def auto_accept(self) -> str:
        value = self._settings.auto_accept
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
            group=item.group_name, group_id=item.group,
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
            self._store.save_transfer(item.hex, item.record())
        self._emit(TransferEvent(self.view(item)))

    def _set(self, item: _Transfer, state: TransferState, detail: str | None = None) -> None:
        item.state = state
        if detail is not None:
            item.detail = detail
        self._changed(item)

    # -- sending ----------------------------------------------------------------------

    async def send_files(self, peer: str, paths: list[str], *,
                         limit_bytes_per_s: float = 0.0) -> TransferView:
        """List the files, open the stream, offer them in an E2EE message; sending starts
        when the peer accepts (the task runs in the background; each file is hashed as it
        is sent)."""
        built = await _listed(paths)
        return await self.send_built(peer, built, limit_bytes_per_s=limit_bytes_per_s)

    async def send_built(self, peer: str, built: BuiltManifest, *,
                         limit_bytes_per_s: float = 0.0,
                         relay_timeout: float = RELAY_READY_S) -> TransferView:
        """Offer a listed manifest (``send_files`` builds one from paths).

        It may start while the relay login is under way: an existing session (in the
        store) and the QKD keys (from the KME) need no relay, so they overlap the login;
        the stream and the offer wait up to ``relay_timeout`` for it."""
        conversation = ConversationId.direct(peer)
        stages = _Stages()
        peer_sae_id = await self._conversations.ensure_session(conversation)
        stages.done("session")
        qkd = await self._qkd.enc_keys(peer_sae_id, QKD_KEYS_PER_TRANSFER)
        stages.done("QKD keys")
        manifest = built.manifest
        if qkd is not None:
            manifest = manifest.with_qkd_key_ids(qkd.key_ids)
        secret = os.urandom(SECRET_BYTES)
        material = qkd.material if qkd is not None else None
        try:
            keys = TransferKeys(manifest, secret, material, policy=self._settings.policy)
        except QkdRequired as exc:
            raise MessengerError(
                f"not sent: {exc} ({self._qkd.last_error or 'no QKD keys available'})"
            ) from None
        item = _Transfer(
            tid=manifest.transfer_id, peer=peer, outgoing=True, manifest=manifest,
            secret=secret, qkd=material, state=TransferState.OFFERED,
            sources=[str(Path(p).resolve()) for p in built.sources],
            stamps=[list(s) for s in built.stamps],
        )
        _arm_sender(item, keys, built, limit_bytes_per_s)
        # Open the stream first: the peer may accept (and answer on it) at once.
        try:
            if not self._relay.ready:
                await self._relay.wait_ready(relay_timeout)
            await self._relay.open_stream(item.tid, peer)
        except StreamRefused as exc:
            raise MessengerError(f"the relay refused the transfer: {exc}", code=exc.code,
                                 reason=exc.reason) from None
        except RelayError as exc:
            raise MessengerError(f"not sent: {exc}") from None
        stages.done("login + stream")
        self._transfers[item.tid] = item
        self._changed(item)
        try:
            await self._conversations.send_transfer_message(
                conversation, payloads.transfer(encode_offer(manifest), secret))
        except MessengerError as exc:
            self._finish(item, TransferState.FAILED)
            raise MessengerError(f"the offer was not sent: {exc}") from None
        stages.done("record + offer")
        log.info("offered transfer %s: %s", item.hex[:8], stages)
        self._start(item)
        return self.view(item)

    async def send_group_files(self, group_ref: str, paths: list[str], *,
                               limit_bytes_per_s: float = 0.0) -> TransferView:
        """A group file: offered to every member through the pairwise sessions, the
        chunks sealed once and uploaded once; the relay spools them for each member."""
        built = await _listed(paths)
        return await self.send_group_built(group_ref, built,
                                           limit_bytes_per_s=limit_bytes_per_s)

    async def send_group_built(self, group_ref: str, built: BuiltManifest, *,
                               limit_bytes_per_s: float = 0.0,
                               relay_timeout: float = RELAY_READY_S) -> TransferView:
        """``send_group_files`` with the files already listed."""
        group = self._conversations.group(group_ref)
        me = self._settings.handle
        if group.status != "member" or me not in group.members:
            raise MessengerError(f"you are not a member of {group.name} any more")
        recipients = [m for m in group.members if m != me]
        if not recipients:
            raise MessengerError(f"{group.name} has no other members to send to")
        manifest, secret = built.manifest, os.urandom(SECRET_BYTES)
        # No QKD key_IDs of its own (they are pairwise): the secret rides each member's
        # QKD-mixed pairwise session, which is where fresh QKD material enters.
        keys = TransferKeys(manifest, secret, None, policy=QkdPolicy.PREFER)
        item = _Transfer(
            tid=manifest.transfer_id, peer="@" + group.name, outgoing=True, manifest=manifest,
            secret=secret, qkd=None, state=TransferState.OFFERED,
            sources=[str(Path(p).resolve()) for p in built.sources],
            stamps=[list(s) for s in built.stamps], group=group.group_id,
            group_name=group.name, recipients=recipients)
        _arm_sender(item, keys, built, limit_bytes_per_s)
        try:
            if not self._relay.ready:
                await self._relay.wait_ready(relay_timeout)
            await self._relay.open_group_stream(item.tid, tuple(recipients))
        except StreamRefused as exc:
            raise MessengerError(f"the relay refused the group file: {exc}", code=exc.code,
                                 reason=exc.reason) from None
        except RelayError as exc:
            raise MessengerError(f"not sent: {exc}") from None
        self._transfers[item.tid] = item
        self._changed(item)
        offer = encode_group_offer(manifest, bytes.fromhex(group.group_id), group.name)


        async def offer_to(member: str) -> str:
            """Offer to one member, durably at the relay before the upload can end (the
            sender may exit then); "" or why not."""
            conversation = ConversationId.direct(member)
            try:
                await self._conversations.ensure_session(conversation)
                await self._conversations.send_transfer_message(
                    conversation, payloads.transfer(offer, secret), wait=True)
            except MessengerError as exc:
                return f"{member} ({exc})"
            return ""

        results = await asyncio.gather(*(offer_to(m) for m in recipients))
        unreached = [why for why in results if why]
        if len(unreached) == len(recipients):
            self._finish(item, TransferState.FAILED)
            raise MessengerError("the offer reached no member: " + "; ".join(unreached))
        if unreached:
            item.detail = "not offered to " + "; ".join(unreached)
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
        if item.outgoing and item.group:
            runner = self._run_uploader
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
                                policy=self._policy_of(item))
            reader = FileReader(item.sources, [tuple(s) for s in item.stamps])
            if item.snapshot is not None:
                item.sender = TransferSender.restore(item.snapshot, keys, reader,
                                                     window_chunks=UNBOUNDED_WINDOW)
            else:
                item.sender = TransferSender(keys, reader, window_chunks=UNBOUNDED_WINDOW)
            item.meter = item.sender.meter
        return item.sender

    async def _run_sender(self, item: _Transfer) -> None:
        sender = self._ensure_sender(item)
        assert item.queue is not None
        # Idempotent: after a restart (ours or the relay's) it finds the stream registered.
        # Nothing is rewound here: the receiver finds any gap and says where to resume.
        await self._relay.open_stream(item.tid, item.peer)
        self._set(item, _SENDER_STATE[sender.status], "")
        driver = SenderDriver(
            sender, _StreamLink(self._relay, item.tid, self._control_seq), item.queue,
            _ItemObserver(self, item), lock=item.lock, limit_bytes_per_s=item.limit,
            quiet_s=self.sender_quiet_s, quiet_max_s=SENDER_QUIET_MAX_S)
        item.driver = driver
        try:
            status = await driver.run()
        except TransferError as exc:  # a source changed: the cancel went out
            item.detail = str(exc)
            raise
        finally:
            item.driver = None
        if status in (SenderStatus.OFFERED, SenderStatus.SENDING):
            return  # the connection dropped; restarted after the next login
        self._finish(item, _SENDER_STATE[status])

    async def _run_uploader(self, item: _Transfer) -> None:
        """A group file's sender: upload every chunk once, then the ``uploaded`` record."""
        sender = self._ensure_sender(item)
        await self._relay.open_group_stream(item.tid, tuple(item.recipients))
        self._set(item, TransferState.SENDING, item.detail)
        driver = UploadDriver(
            sender, _StreamLink(self._relay, item.tid, self._control_seq), asyncio.Queue(),
            _ItemObserver(self, item), lock=item.lock, limit_bytes_per_s=item.limit,
            barrier=self._relay.barrier, confirm_every=UPLOAD_CONFIRM_EVERY)
        status = await driver.run()
        if status in (SenderStatus.OFFERED, SenderStatus.SENDING):
            return
        self._finish(item, _SENDER_STATE[status])

    def _on_sender_events(self, item: _Transfer, events: list[CoreEvent]) -> None:
        changed = False
        for event in events:
            if isinstance(event, Accepted):
                log.info("transfer %s accepted %.0f ms after it was created", item.hex[:8],
                         1000 * (time.time() - item.started_at))
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
        link = self._link(item)
        for data in frames:
            await link.send_control(data)

    def _link(self, item: _Transfer) -> _StreamLink:
        """The transfer's link over its relay stream (a group file's member sends nothing
        on it: the relay accepts frames there from the sender only)."""
        link_type = _GroupReceiveLink if item.group and not item.outgoing else _StreamLink
        return link_type(self._relay, item.tid, self._control_seq)

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
        if state.finished and item.outgoing and not self._closed:
            closing = asyncio.ensure_future(self._close_stream_later(item))
            self._background.add(closing)
            closing.add_done_callback(self._background.discard)

    async def _close_stream_later(self, item: _Transfer) -> None:
        """The sender closes the relay stream once the end is certain (the receiver's last
        ack came, or it cancelled/declined); the receiver never needs to."""
        if not item.outgoing:
            return
        with contextlib.suppress(RelayError):
            await self._relay.close_stream(item.tid)

    # -- receiving --------------------------------------------------------------------

    async def on_payload(self, conversation: ConversationId,
                         body: payloads.TransferMessage) -> None:
        """An E2EE ``transfer`` payload arrived: offer, decline or cancel."""
        peer = conversation.peer
        try:
            message = decode_message(body.data)
        except OutdatedOffer as exc:
            # Not a failed transfer: decline it with the reason, so the sender's qsecret
            # shows "declined: ... update qsecret" instead of waiting for an answer.
            log.warning("declined an offer from %s: %s", peer, exc)
            if exc.transfer_id is not None and not self._closed:
                await self._conversations.send_transfer_message(
                    conversation, payloads.transfer(encode_decline(exc.transfer_id, str(exc))))
            return
        except TransferError as exc:
            log.warning("dropped a malformed transfer message from %s: %s", peer, exc)
            return
        item = self._transfers.get(message.transfer_id)
        if message.type == "transfer-group-offer":
            if item is None:
                self._on_group_offer(peer, message, body.secret)
            return
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
            if self._should_auto_accept(peer) and not self._closed:
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

    def _on_group_offer(self, peer: str, message: Any, secret: bytes) -> None:
        """A group file offered by ``peer``: kept when ``peer`` and this user are members
        of that group; else recorded as refused, with the reason (nothing is received)."""
        assert message.manifest is not None
        if len(secret) != SECRET_BYTES:
            log.warning("dropped a group file offer from %s without its secret", peer)
            return
        item = _Transfer(tid=message.transfer_id, peer=peer, outgoing=False,
                         manifest=message.manifest, secret=secret, qkd=None,
                         state=TransferState.OFFERED, group=message.group.hex(),
                         group_name=message.group_name)
        refusal = ""
        try:
            group = self._conversations.group(message.group.hex())
        except MessengerError:
            refusal = f"refused: a group file from {peer} for a group you are not in"
        else:
            item.group_name = group.name
            if peer not in group.members:
                refusal = f"refused: {peer} is not a member of {group.name}"
            elif self._settings.handle not in group.members or group.status != "member":
                refusal = f"refused: you are not a member of {group.name} any more"
        self._transfers[item.tid] = item
        if refusal:
            log.warning("group file %s: %s", item.hex[:8], refusal)
            item.detail = refusal
            self._finish(item, TransferState.FAILED)
            return
        self._changed(item)
        if self._should_auto_accept(peer) and not self._closed:
            task = asyncio.ensure_future(self._auto_accept(item))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _should_auto_accept(self, peer: str) -> bool:
        mode = self.auto_accept
        if mode == "all":
            return True
        if mode == "verified":
            return self._conversations.verified(ConversationId.direct(peer))
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
        # Another qsecret process on this profile (receive-files, a second chat window) may
        # have taken the offer since this one read it: claim it in the store first.
        claimed = {**item.record(), "state": TransferState.SENDING.value, "detail": ""}
        stored = self._store.claim_transfer(item.hex, TransferState.OFFERED.value, claimed)
        if stored is not None:
            self._adopt(item, stored)
            raise MessengerError(f"the transfer is {item.state.value} already: another qsecret "
                                 "process on this profile took the offer")
        try:
            await self._open_receiver(item)
        except BaseException:
            self._store.save_transfer(item.hex, item.record())  # still offered: not taken
            raise
        item.meter = item.receiver.meter  # type: ignore[union-attr]
        self._set(item, TransferState.SENDING, "")
        self._start(item)
        if item.group and self._dropped_frames:
            # Its chunks may have come (and been dropped, unacked) before the offer was
            # read or accepted: they are spooled once, so ask for the spool again.
            self._dropped_frames = False
            with contextlib.suppress(RelayError):
                await self._relay.spool_rewind()
        return self.view(item)

    async def _open_receiver(self, item: _Transfer) -> None:
        """Fetch the transfer's QKD keys and open its receiver (partial files, state)."""
        ids = item.manifest.qkd_key_ids
        if ids:
            peer_sae_id = self._conversations.peer_sae_id(ConversationId.direct(item.peer))
            if peer_sae_id is None:
                raise MessengerError(f"no session with {item.peer}")
            keys = await self._qkd.dec_keys(peer_sae_id, tuple(ids))
            if keys is None:
                raise MessengerError(
                    "the QKD keys of this transfer are not available from your KME yet "
                    f"({self._qkd.last_error or 'try again in a moment'})")
            item.qkd = keys.material
        try:
            keys_ = TransferKeys(item.manifest, item.secret, item.qkd,
                                 policy=self._policy_of(item))
            self.downloads.mkdir(parents=True, exist_ok=True)
            item.receiver = await asyncio.to_thread(TransferReceiver.accept, keys_,
                                                    self.downloads)
        except QkdRequired as exc:
            raise MessengerError(f"cannot accept: {exc}") from None
        except (TransferError, OSError) as exc:
            raise MessengerError(f"cannot accept: {exc}") from None

    def _adopt(self, item: _Transfer, stored: dict[str, Any]) -> None:
        """Show what another process on this profile made of a transfer (state, files)."""
        theirs = _Transfer.from_record(stored)
        item.state, item.detail, item.paths = theirs.state, theirs.detail, theirs.paths
        item.done_bytes, item.finished_at = theirs.done_bytes, theirs.finished_at
        self._changed(item, persist=False)

    def _policy_of(self, item: _Transfer) -> QkdPolicy:
        """A group file has no QKD keys of its own: its secret came through a QKD-mixed
        pairwise session."""
        return QkdPolicy.PREFER if item.group else self._settings.policy

    async def decline(self, transfer_id: str, reason: str = "declined") -> None:
        item = self._find(transfer_id)
        if item.outgoing or item.state is not TransferState.OFFERED:
            raise MessengerError("only an offer waiting for you can be declined")
        await self._conversations.send_transfer_message(
            ConversationId.direct(item.peer), payloads.transfer(encode_decline(item.tid, reason)))
        self._set(item, TransferState.DECLINED, reason)

    async def cancel(self, transfer_id: str) -> None:
        item = self._find(transfer_id)
        if item.state.finished:
            raise MessengerError(f"the transfer is already {item.state.value}")
        reason = "cancelled by " + self._settings.handle
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
        # Also in an E2EE message: the peer may not have accepted (or be online) yet. (A
        # group file's cancel goes on its stream, which every member reads; a member's
        # cancel concerns only its own copy.)
        if not item.group:
            with contextlib.suppress(MessengerError):
                await self._conversations.send_transfer_message(
                    ConversationId.direct(item.peer),
                    payloads.transfer(encode_cancel(item.tid, reason)))
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
                                policy=self._policy_of(item))
            item.receiver = TransferReceiver.resume(keys, self.downloads)
            item.meter = item.receiver.meter
        return item.receiver

    async def _run_receiver(self, item: _Transfer) -> None:
        receiver = await asyncio.to_thread(self._ensure_receiver, item)
        assert item.queue is not None
        if item.state is TransferState.WAITING:
            receiver.request_resume()
            self._set(item, TransferState.SENDING, "")
        driver = ReceiverDriver(
            receiver, self._link(item), item.queue,
            _ItemObserver(self, item), lock=item.lock, nudge_s=IDLE_NUDGE_S,
            nudge_max_s=IDLE_NUDGE_MAX_S, keep_early=bool(item.group))
        status = await driver.run()
        if status is ReceiverStatus.RECEIVING:
            return  # the connection dropped; restarted after the next login
        self._finish(item, _RECEIVER_STATE[status])

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
        if item.group and item.receiver is not None:
            failure = _group_copy_failure(events)
            if failure:
                # Nothing is sent twice on a group stream: this copy cannot be completed.
                with item.lock:
                    item.receiver.fail()
                item.detail, changed = failure, True
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
            elif item is None:
                self._dropped_frames = True  # perhaps a group file whose offer is coming
            return
        if item.queue is None or item.task is None or item.task.done():
            if item.state is TransferState.OFFERED and not item.outgoing:
                self._dropped_frames = True
                return  # not accepted yet: the relay keeps it until we ack
            self._start(item)
        assert item.queue is not None
        # bounded for receivers: the disk sets the pace
        await item.queue.put(Incoming(frame.payload, frame.seq))

    async def _after_the_end(self, item: _Transfer, frame: BinaryFrame) -> None:
        """A frame for a transfer that ended here: a complete receiver repeats its final
        ack (the sender may have missed it); the relay may drop its copy either way."""
        try:
            receiver = None
            if item.state is TransferState.COMPLETE:
                receiver = await asyncio.to_thread(self._ensure_receiver, item)
            link = self._link(item)
            if receiver is None:
                await link.ack([frame.seq])
            else:
                await ReceiverDriver(receiver, link, asyncio.Queue(), _ItemObserver(self, item),
                                     lock=item.lock).answer_late(
                    Incoming(frame.payload, frame.seq))
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
        if item.group and item.outgoing:
            # One member's copy was refused (e.g. its spool is full): the others go on;
            # that member's copy ends short and fails there.
            log.info("group file %s: %s", item.hex[:8], error.message)
            item.detail = error.message
            self._changed(item, persist=False)
        elif error.code in QUOTA_CODES:
            if item.driver is not None:
                item.driver.pause()
            elif item.sender is not None:
                with item.lock:
                    item.sender.retransmit()
            detail = SPOOL_FULL_BY_CODE.get(error.code, SPOOL_FULL).format(peer=item.peer)
            if item.state is not TransferState.WAITING or item.detail != detail:
                log.info("transfer %s: %s", item.hex[:8], error.message)
                self._set(item, TransferState.WAITING, detail)
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
        """Stop every transfer task and background job, and save where each one is (the
        store closes after this)."""
        self._closed = True
        background = list(self._background)
        for job in background:
            job.cancel()
        for item in self._transfers.values():
            if item.task is not None:
                item.task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        for item in self._transfers.values():
            if item.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await item.task
            if item.sender is not None and not item.state.finished:
                item.snapshot = item.sender.snapshot()
                self._store.save_transfer(item.hex, item.record())
            if item.receiver is not None:
                item.receiver.close()
            if item.sender is not None:
                closer = getattr(item.sender.reader, "close", None)
                if closer is not None:
                    closer()


def _group_copy_failure(events: list[CoreEvent]) -> str:
    """Why a group file's copy cannot be completed here, from its receiver's events (a
    chunk that failed authentication, a file whose SHA-256 differs); "" if none."""
    for event in events:
        if isinstance(event, ChunkRefused) and isinstance(
                event.error, TamperedChunk | MalformedFrame):
            return f"refused: {event.error}; the group file is not saved"
        if isinstance(event, IntegrityFailed):
            return (f"refused: file #{event.file_index} failed its SHA-256 check; the group "
                    "file is not saved")
    return ""


def _arm_sender(item: _Transfer, keys: TransferKeys, built: BuiltManifest,
                limit_bytes_per_s: float) -> None:
    """Give an outgoing transfer its sending machine, reading the files as listed."""
    item.limit = limit_bytes_per_s
    item.sender = TransferSender(keys, FileReader(item.sources, built.stamps),
                                 window_chunks=UNBOUNDED_WINDOW)
    item.meter = item.sender.meter


async def _listed(paths: list[str]) -> BuiltManifest:
    """The files and folders to send, listed off the event loop (what is left out, logged)."""
    if not paths:
        raise MessengerError("nothing to send: give at least one file or folder")
    try:
        built = await asyncio.to_thread(build_manifest, paths)
    except TransferError as exc:
        raise MessengerError(str(exc)) from None
    for skipped in built.skipped:
        log.info("not sending %s: %s", skipped.path, skipped.reason)
    return built
