"""The asyncio layer that runs a sender or receiver core over a frame link: the one the
messenger runs (client.messenger.transfers) and the one the tests drive.

The link is what the caller provides (:class:`FrameLink`): in the messenger, binary frames
of the transfer's relay stream; in tests, an in-memory link that may lose frames. Frames
for this transfer arrive on an ``asyncio.Queue`` (``None`` when the connection drops).
Disk reads, sealing, hashing and writes run on a worker thread, a batch per trip, so the
event loop -- and the websocket keepalive -- never waits on them; ``lock`` makes every core
call one at a time (the messenger may rewind a sender from the event loop meanwhile).

Lost frames are recovered by the cores' own protocol: the receiver asks to resume when no
frame came for ``nudge_s`` (doubling up to ``nudge_max_s``); the sender goes back to the
last acknowledged chunk when the receiver was quiet for ``quiet_s`` (doubling likewise).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from .errors import OutOfOrderChunk, TransferError
from .events import ChunkRefused, Event
from .receiver import ReceiverStatus, TransferReceiver
from .sender import SenderStatus, TransferSender

SEAL_BATCH = 4  # chunks the sender reads and seals per trip to its worker thread
ACK_EVERY_FRAMES = 16  # the receiver acks at least this often even when frames keep coming
QUIET_S = 30.0
QUIET_MAX_S = 3600.0
NUDGE_S = 10.0
NUDGE_MAX_S = 600.0
_SENDER_RUNNING = (SenderStatus.OFFERED, SenderStatus.SENDING)


@dataclass(frozen=True)
class Incoming:
    """A frame for this transfer: its payload, and the link's number for it (acked back)."""

    payload: bytes
    seq: int = 0


FrameQueue = asyncio.Queue[Incoming | None]


class FrameLink(Protocol):
    """Where a driver's frames go."""

    headroom: int  # bytes the link writes in front of each chunk (its own frame header)

    def frame_chunk(self, frame: bytearray, ordinal: int) -> None:
        """Fill the ``headroom`` bytes in front of a sealed chunk (on the worker thread)."""

    async def send_chunk(self, frame: bytearray) -> None:
        """Write a sealed chunk. Once this returns the sender seals later chunks into the
        same buffer: a link that keeps the frame (a queue) keeps a copy."""

    async def send_control(self, data: bytes) -> None: ...
    async def ack(self, seqs: list[int]) -> None:
        """The receiver processed these incoming frames (the relay may drop its copies)."""


class Observer(Protocol):
    """What the driver reports: the cores' events, and that progress may be shown."""

    def events(self, events: list[Event]) -> None: ...
    def progress(self) -> None: ...


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


@dataclass
class SenderDriver:
    sender: TransferSender
    link: FrameLink
    incoming: FrameQueue
    observer: Observer
    lock: threading.Lock = field(default_factory=threading.Lock)
    limit_bytes_per_s: float = 0.0
    quiet_s: float = QUIET_S
    quiet_max_s: float = QUIET_MAX_S
    paused: bool = False  # the link's far end is full: wait for the receiver to speak
    # Frames already sent, sealed into again (a new 256 KiB buffer per chunk cost page
    # faults: the allocator returned the memory to the kernel between chunks).
    spare: list[bytearray] = field(default_factory=list)

    def pause(self) -> None:
        """Stop sending into a full spool; go on from the last ack once the receiver speaks
        again (it drained the spool) or after a quiet while."""
        self.paused = True
        with self.lock:
            self.sender.retransmit()

    async def run(self) -> SenderStatus:
        """Send until the transfer ends or the connection drops (``None`` on the queue);
        OFFERED or SENDING then means "not finished: run again on the next connection".
        A source file that changed raises TransferError after the cancel went out."""
        sender = self.sender
        pace = _Pacer(self.limit_bytes_per_s)
        quiet = self.quiet_s
        while True:
            await self._send_while_allowed(pace)
            await self._send_controls()
            if sender.status not in _SENDER_RUNNING:
                return sender.status
            try:
                incoming = await asyncio.wait_for(self.incoming.get(), quiet)
            except TimeoutError:
                # Nothing from the receiver for a while with chunks unacknowledged (its final
                # ack may have died with a relay): go back to the last ack. The relay's spool
                # keeps one copy of each chunk, so an absent receiver costs no more than this.
                if sender.status is SenderStatus.SENDING:
                    with self.lock:
                        sender.retransmit()
                self.paused = False
                quiet = min(quiet * 2, self.quiet_max_s)
                continue
            if incoming is None:
                return sender.status
            quiet = self.quiet_s
            self.paused = False
            with self.lock:
                events = sender.receive_control(incoming.payload)
            self.observer.events(events)

    async def _send_while_allowed(self, pace: _Pacer) -> None:
        """Send batches until the window is full, the core is done, the link is full
        (``paused``) or the receiver spoke (a resume or cancel may change what comes next).

        While a full batch goes out, the next one is read and sealed on the worker thread
        (the socket writes and the hashing overlap). It is sent too when the receiver
        spoke meanwhile (frames the receiver has or does not want are ignored by it); it
        is void when the link filled up (the core goes back to the last ack again) or
        failed (the receiver finds the gap and asks to resume, as for any lost frame).
        """
        ahead: asyncio.Future[list[bytearray]] | None = None
        try:
            while not self.paused:
                frames = await (ahead if ahead is not None else self._next_frames())
                ahead = None
                if not frames:
                    return
                if len(frames) == SEAL_BATCH and self.incoming.empty():
                    ahead = asyncio.ensure_future(self._next_frames())
                await self._send_batch(frames, pace)
                if not self.incoming.empty() and ahead is not None:
                    frames, ahead = await ahead, None
                    await self._send_batch(frames, pace)
                if not self.incoming.empty():
                    return
        finally:
            if ahead is not None:  # sealed, never sent: like frames lost on the way
                await asyncio.gather(ahead, return_exceptions=True)
                if self.paused:  # the link is full: from the last ack once it has room
                    with self.lock:
                        self.sender.retransmit()

    async def _send_batch(self, frames: list[bytearray], pace: _Pacer) -> None:
        link = self.link
        for frame in frames:
            if self.paused:  # a quota error rewound the core: these are void
                break
            await link.send_chunk(frame)
            self._spent(frame)
            await pace.sent(len(frame) - link.headroom)
        self.observer.progress()

    async def _next_frames(self) -> list[bytearray]:
        """Up to SEAL_BATCH sealed chunks, framed by the link (one thread trip)."""
        sender, link = self.sender, self.link

        spare = self.spare

        def read() -> list[bytearray]:
            frames: list[bytearray] = []
            with self.lock:  # the loop may rewind the core (a quota error) meanwhile
                while len(frames) < SEAL_BATCH:
                    ordinal = sender.next_ordinal
                    frame = sender.next_frame(headroom=link.headroom,
                                              reuse=spare.pop() if spare else None)
                    if frame is None:
                        break
                    link.frame_chunk(frame, ordinal)
                    frames.append(frame)
            return frames

        try:
            return await asyncio.to_thread(read)
        except TransferError:  # e.g. a source changed: the core queued a cancel; send it
            await self._send_controls()
            raise

    def _spent(self, frame: bytearray) -> None:
        """The link is done with ``frame`` (written out): seal a later chunk into it."""
        if len(self.spare) < SEAL_BATCH:
            self.spare.append(frame)

    async def _send_controls(self) -> None:
        for data in self.sender.data_to_send():
            await self.link.send_control(data)


async def _no_barrier() -> None:
    return None


@dataclass
class UploadDriver(SenderDriver):
    """A group file: every chunk is uploaded once and nobody answers on the stream (the
    relay spools a copy for each member). ``barrier`` returns once what was sent is
    durable at the relay; each barrier confirms the chunks before it (the snapshot then
    resumes after them), and the sealed ``uploaded`` record closes the upload."""

    barrier: Callable[[], Awaitable[None]] = _no_barrier
    confirm_every: int = 64  # chunks between two barriers

    async def run(self) -> SenderStatus:
        sender, link = self.sender, self.link
        pace = _Pacer(self.limit_bytes_per_s)
        with self.lock:
            sender.start_upload()
            # Again after a lost connection: from the last chunk the relay confirmed (it
            # keeps a chunk it still holds once; a member skips one it already has).
            sender.retransmit()
        unconfirmed = 0
        while sender.status is SenderStatus.SENDING and (frames := await self._next_frames()):
            for frame in frames:
                await link.send_chunk(frame)
                self._spent(frame)
                await pace.sent(len(frame) - link.headroom)
            unconfirmed += len(frames)
            if unconfirmed >= self.confirm_every:
                await self.barrier()
                with self.lock:
                    events = sender.upload_confirmed(final=False)
                self.observer.events(events)
                unconfirmed = 0
            self.observer.progress()
        await self._send_controls()  # a cancel, if one was queued
        if sender.status is SenderStatus.SENDING:
            with self.lock:
                record = sender.uploaded_record()
            await link.send_control(record)
            await self.barrier()
            with self.lock:
                events = sender.upload_confirmed(final=True)
            self.observer.events(events)
        return sender.status


def _receive_all(lock: threading.Lock, receiver: TransferReceiver,
                 payloads: list[bytes]) -> tuple[list[Event], set[int]]:
    """Feed frames to the receiver core in order (on the worker thread); stop at the end.
    Also: the indexes of the frames refused as early (out of order)."""
    events: list[Event] = []
    early: set[int] = set()
    with lock:
        for index, payload in enumerate(payloads):
            if receiver.status is not ReceiverStatus.RECEIVING:
                break
            got = receiver.receive_frame(payload)
            if any(isinstance(e, ChunkRefused) and isinstance(e.error, OutOfOrderChunk)
                   for e in got):
                early.add(index)
            events.extend(got)
    return events, early


@dataclass
class ReceiverDriver:
    receiver: TransferReceiver
    link: FrameLink
    incoming: FrameQueue
    observer: Observer
    lock: threading.Lock = field(default_factory=threading.Lock)
    nudge_s: float = NUDGE_S
    nudge_max_s: float = NUDGE_MAX_S
    # A group file (nothing is sent twice): a frame that came early is not acknowledged,
    # so the relay's spool brings it again, in order, after a rewind or the next login.
    keep_early: bool = False

    async def run(self) -> ReceiverStatus:
        """Receive until the transfer ends or the connection drops (``None`` on the queue).

        Acks are cumulative: the core saves its position before it acks, and only then are
        the frames acknowledged to the link (the relay may drop its copies)."""
        receiver, queue = self.receiver, self.incoming
        link_acks: list[int] = []
        nudge = self.nudge_s
        unanswered = 0
        while receiver.status is ReceiverStatus.RECEIVING:
            if queue.empty() or unanswered >= ACK_EVERY_FRAMES:
                await self._send_controls()
                unanswered = 0
                if link_acks:
                    await self.link.ack(link_acks)
                    link_acks = []
            try:
                frame = await asyncio.wait_for(queue.get(), nudge)
            except TimeoutError:
                receiver.request_resume()  # nudge a sender that lost our acks or chunks
                nudge = min(nudge * 2, self.nudge_max_s)
                continue
            if frame is None:
                return receiver.status
            nudge = self.nudge_s
            # Whatever else is already waiting goes to the worker thread in the same trip
            # (one thread hand-off per batch, not per chunk).
            batch = [frame]
            while len(batch) < ACK_EVERY_FRAMES - unanswered and not queue.empty():
                more = queue.get_nowait()
                if more is None:
                    break
                batch.append(more)
            events, early = await asyncio.to_thread(_receive_all, self.lock, receiver,
                                                    [f.payload for f in batch])
            link_acks.extend(f.seq for i, f in enumerate(batch)
                             if not (self.keep_early and i in early))
            unanswered += len(batch)
            self.observer.events(events)
        await self._send_controls()
        if link_acks:
            await self.link.ack(link_acks)
        return receiver.status

    async def answer_late(self, frame: Incoming) -> None:
        """A frame after the end: a complete receiver repeats its final ack (the sender may
        have missed it); the link may drop its copy either way."""
        if self.receiver.status is ReceiverStatus.COMPLETE:
            await asyncio.to_thread(_receive_all_late, self.lock, self.receiver, frame.payload)
            await self._send_controls()
        await self.link.ack([frame.seq])

    async def _send_controls(self) -> None:
        for data in self.receiver.data_to_send():
            await self.link.send_control(data)


def _receive_all_late(lock: threading.Lock, receiver: TransferReceiver, payload: bytes) -> None:
    with lock:
        receiver.receive_frame(payload)


def no_observer() -> Observer:
    """An observer that ignores everything (for callers that only want the end status)."""
    return _Ignore()


class _Ignore:
    def events(self, events: list[Event]) -> None:
        return None

    def progress(self) -> None:
        return None

