"""Group files at the core and driver level: one upload nobody answers (UploadDriver), a
receiver that acks only what it could take in order, and the refusals that fail a copy
(a tampered chunk, an upload that ends short) without leaving anything partial behind."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from client.messenger.transfers import _group_copy_failure
from client.transfer import (
    ChunkRefused,
    OutOfOrderChunk,
    ReceiverStatus,
    SenderStatus,
    TamperedChunk,
    TruncatedStream,
)
from client.transfer.driver import Incoming, ReceiverDriver, UploadDriver

from .helpers import Pair, make_pair, sha256_file, write_seeded_file
from .test_driver import LossyLink, Seen


def _group_pair(tmp_path: Path, size: int = 300_000) -> tuple[Pair, Path]:
    source = tmp_path / "src" / "slides.bin"
    write_seeded_file(source, size, seed=18)
    return make_pair([source], tmp_path / "dl", chunk_size=64 * 1024), source


def _upload(pair: Pair) -> list[bytes]:
    """Everything the group sender uploads, in order: its chunks, then ``uploaded``."""
    pair.sender.start_upload()
    frames = [bytes(f) for f in iter(pair.sender.next_frame, None)]
    return frames + [pair.sender.uploaded_record()]


def _leftovers(downloads: Path) -> list[Path]:
    return [p for p in downloads.rglob("*") if p.is_file() and ".qsecret-partial" not in p.parts]


async def test_one_upload_nobody_answers_arrives_verified(tmp_path: Path) -> None:
    pair, source = _group_pair(tmp_path)
    link = LossyLink()
    barriers: list[int] = []

    async def barrier() -> None:
        barriers.append(link.count["r"])

    uploader = UploadDriver(pair.sender, link.end("r"), asyncio.Queue(), Seen(),
                            barrier=barrier, confirm_every=2)
    assert await uploader.run() is SenderStatus.COMPLETE
    assert link.count["s"] == 0  # nothing ever went back to the sender
    assert barriers[-1] == link.count["r"]  # the last barrier follows the uploaded record
    assert len(barriers) > 1  # and progress was confirmed on the way
    await link.to_receiver.put(None)
    receiver = ReceiverDriver(pair.receiver, link.end("s"), link.to_receiver, Seen(),
                              keep_early=True)
    assert await receiver.run() is ReceiverStatus.COMPLETE
    assert sha256_file(pair.downloads / "slides.bin") == sha256_file(source)


async def test_early_frames_are_not_acked_and_come_again_in_order(tmp_path: Path) -> None:
    """Chunks that came before the offer was read are dropped unacked; what follows them
    is refused as early and not acked either; the spool, rewound, brings all in order."""
    pair, source = _group_pair(tmp_path)
    frames = _upload(pair)
    link = LossyLink()
    for seq, frame in enumerate(frames[2:], start=2):  # 0 and 1 were dropped
        await link.to_receiver.put(Incoming(frame, seq))
    for seq, frame in enumerate(frames):  # the rewound spool: every unacked frame again
        if seq < 2 or seq not in link.acked:
            await link.to_receiver.put(Incoming(frame, seq))
    await link.to_receiver.put(None)
    seen = Seen()
    receiver = ReceiverDriver(pair.receiver, link.end("s"), link.to_receiver, seen,
                              keep_early=True)
    assert await receiver.run() is ReceiverStatus.COMPLETE
    early = [e for e in seen.seen if isinstance(e, ChunkRefused)
             and isinstance(e.error, OutOfOrderChunk)]
    assert early and _group_copy_failure(seen.seen) == ""  # a gap alone fails nothing
    # Acked once each: the early copies were not (the relay would have deleted the ones
    # the rewind brings), only the in-order ones were.
    assert len(link.acked) == len(set(link.acked)) and {0, 1, 2} <= set(link.acked)
    assert sha256_file(pair.downloads / "slides.bin") == sha256_file(source)


def test_an_upload_that_ends_short_fails_the_copy_and_keeps_nothing(tmp_path: Path) -> None:
    pair, _ = _group_pair(tmp_path)
    frames = _upload(pair)
    for frame in frames[:-2]:  # the last chunk never came; then the uploaded record
        pair.receiver.receive_frame(frame)
    with pytest.raises(TruncatedStream, match="truncated: the sender's upload ended"):
        pair.receiver.receive_frame(frames[-1])
    assert pair.receiver.status is ReceiverStatus.FAILED
    assert _leftovers(pair.downloads) == []


def test_an_upload_that_ends_short_fails_the_copy_also_after_a_rewind(tmp_path: Path) -> None:
    """Chunk 0 came before the offer was read, so the rest were early and the end of the
    upload came with a gap: it waits for the rewind, which brings the chunks and the end
    record again; that copy (the same seq) ends the copy as truncated, not as a replay."""
    pair, _ = _group_pair(tmp_path)
    frames = _upload(pair)
    for frame in frames[1:-2]:  # the last chunk never reached the relay
        pair.receiver.receive_frame(frame)
    waiting = pair.receiver.receive_frame(frames[-1])
    assert [type(e.error) for e in waiting if isinstance(e, ChunkRefused)] == [OutOfOrderChunk]
    assert pair.receiver.status is ReceiverStatus.RECEIVING
    for frame in frames[:-2]:  # the rewound spool
        pair.receiver.receive_frame(frame)
    with pytest.raises(TruncatedStream, match="truncated: the sender's upload ended"):
        pair.receiver.receive_frame(frames[-1])
    assert pair.receiver.status is ReceiverStatus.FAILED
    assert _leftovers(pair.downloads) == []


def test_a_tampered_chunk_fails_the_copy_and_keeps_nothing(tmp_path: Path) -> None:
    pair, _ = _group_pair(tmp_path)
    frames = _upload(pair)
    events = pair.receiver.receive_frame(frames[0])
    bad = bytearray(frames[1])
    bad[-20] ^= 1
    events += pair.receiver.receive_frame(bytes(bad))
    refused = [e for e in events if isinstance(e, ChunkRefused)]
    assert refused and isinstance(refused[0].error, TamperedChunk)
    reason = _group_copy_failure(events)
    assert reason.startswith("refused: ") and "not saved" in reason
    pair.receiver.fail()  # what the messenger does with that reason
    assert pair.receiver.status is ReceiverStatus.FAILED
    assert _leftovers(pair.downloads) == []


class _DroppingEnd:
    """A link whose connection drops after ``limit`` frames (what it sent before the last
    barrier is durable; the rest is lost with the connection)."""

    headroom = 0

    def __init__(self, link: LossyLink, limit: int) -> None:
        self.link, self.limit, self.durable = link, limit, 0
        self.pending: list[bytes] = []

    def frame_chunk(self, frame: bytearray, ordinal: int) -> None:
        return None

    async def send_chunk(self, frame: bytearray) -> None:
        await self.send_control(bytes(frame))

    async def send_control(self, data: bytes) -> None:
        if self.durable + len(self.pending) >= self.limit:
            raise ConnectionError("connection to the relay lost")
        self.pending.append(data)

    async def barrier(self) -> None:
        for data in self.pending:
            await self.link.put("r", data)
        self.durable += len(self.pending)
        self.pending.clear()

    async def ack(self, seqs: list[int]) -> None:
        return None


async def test_an_upload_cut_off_goes_on_from_the_last_confirmed_chunk(tmp_path: Path) -> None:
    pair, source = _group_pair(tmp_path)
    link = LossyLink()
    first = _DroppingEnd(link, limit=5)
    with pytest.raises(ConnectionError):
        await UploadDriver(pair.sender, first, asyncio.Queue(), Seen(), barrier=first.barrier,
                           confirm_every=2).run()
    assert pair.sender.status is SenderStatus.SENDING and first.durable == 4
    second = _DroppingEnd(link, limit=1000)
    assert await UploadDriver(pair.sender, second, asyncio.Queue(), Seen(),
                              barrier=second.barrier, confirm_every=2).run() \
        is SenderStatus.COMPLETE
    await link.to_receiver.put(None)
    receiver = ReceiverDriver(pair.receiver, link.end("s"), link.to_receiver, Seen(),
                              keep_early=True)
    assert await receiver.run() is ReceiverStatus.COMPLETE
    assert sha256_file(pair.downloads / "slides.bin") == sha256_file(source)
