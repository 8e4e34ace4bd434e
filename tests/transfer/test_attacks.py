"""Tampered, truncated, reordered, replayed and spliced chunks are refused; nothing is lost."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import pytest

from client.transfer import (
    ChunkRefused,
    ControlIgnored,
    FileEntry,
    IntegrityFailed,
    MalformedFrame,
    Manifest,
    OutOfOrderChunk,
    ReceiverStatus,
    ReplayedChunk,
    Rewound,
    SenderStatus,
    TamperedChunk,
    TransferKeys,
    TransferReceiver,
    TransferSender,
)
from client.transfer.stream import HEADER_BYTES, ChunkSealer, nonce_for

from .helpers import Pair, Secrets, deliver_control, make_pair, pump, sha256_file, write_seeded_file

CHUNK = 4096


def _pair(tmp_path: Path, sizes: tuple[int, ...] = (10 * CHUNK + 5,), window: int = 64) -> Pair:
    paths = []
    for index, size in enumerate(sizes):
        path = tmp_path / "src" / f"f{index}.bin"
        write_seeded_file(path, size, seed=100 + index)
        paths.append(path)
    pair = make_pair(paths, tmp_path / "dl", chunk_size=CHUNK, window=window)
    deliver_control(pair.sender, pair.receiver)  # accept
    return pair


def _refusal(events: list) -> Exception:
    (event,) = [e for e in events if isinstance(e, ChunkRefused)]
    return event.error


def _finish(pair: Pair) -> None:
    pump(pair.sender, pair.receiver)
    assert pair.receiver.status is ReceiverStatus.COMPLETE
    assert pair.sender.status is SenderStatus.COMPLETE
    for index, source in enumerate(pair.sources):
        assert sha256_file(pair.receiver.landed()[index]) == sha256_file(source)


def test_nonce_layout() -> None:
    assert nonce_for(b"P" * 7, 1, False) == b"P" * 7 + b"\x00\x00\x00\x01\x00"
    assert nonce_for(b"P" * 7, 2**32 - 1, True) == b"P" * 7 + b"\xff\xff\xff\xff\x01"


@pytest.mark.parametrize("where", ["payload", "tag", "header-flags", "header-chunk"])
def test_tampered_chunk_refused_then_recovered(tmp_path: Path, where: str) -> None:
    pair = _pair(tmp_path)
    frames = pair.sender.frames()
    bad = bytearray(frames[0])
    if where == "payload":
        bad[HEADER_BYTES + 10] ^= 1
    elif where == "tag":
        bad[-1] ^= 0x80
    elif where == "header-flags":
        bad[30] ^= 1  # claims to be the last chunk
    else:
        struct.pack_into(">I", bad, 26, 1)  # claims to be chunk 1
    error = _refusal(pair.receiver.receive_frame(bad))
    assert isinstance(error, TamperedChunk), error
    assert pair.receiver.position == (0, 0)
    assert os.path.getsize(pair.receiver.store.part_path(0)) == 0
    # The genuine frames that follow are out of order; the receiver asks to resume once.
    refusals = [_refusal(pair.receiver.receive_frame(f)) for f in frames[1:4]]
    assert all(isinstance(e, OutOfOrderChunk) for e in refusals)
    events = deliver_control(pair.sender, pair.receiver)
    assert pair.sender.position == (0, 0) or any(isinstance(e, Rewound) for e in events)
    _finish(pair)


def test_truncated_frames_refused(tmp_path: Path) -> None:
    pair = _pair(tmp_path)
    frame = pair.sender.frames()[0]
    assert isinstance(_refusal(pair.receiver.receive_frame(frame[:-1])), TamperedChunk)
    assert isinstance(_refusal(pair.receiver.receive_frame(frame[:40])), MalformedFrame)
    assert isinstance(_refusal(pair.receiver.receive_frame(b"")), MalformedFrame)
    assert isinstance(_refusal(pair.receiver.receive_frame(b"QSXF\x09\x01")), MalformedFrame)
    assert pair.receiver.position == (0, 0)


def test_truncated_stream_never_lands(tmp_path: Path) -> None:
    """Without the flagged last chunk the file stays partial: truncation is never 'done'."""
    pair = _pair(tmp_path)
    frames = pair.sender.frames()
    for frame in frames[:-1]:
        pair.receiver.receive_frame(frame)
    assert pair.receiver.status is ReceiverStatus.RECEIVING
    assert pair.receiver.landed() == {}
    assert not (tmp_path / "dl" / "f0.bin").exists()
    # A short chunk that claims to be last at an earlier index cannot be forged either:
    sealer = ChunkSealer(pair.manifest.transfer_id, 0, pair.receiver.keys.file_key(0))
    forged = sealer.seal(10, b"x" * 5, last=False)  # right index and length, flag cleared
    assert isinstance(_refusal(pair.receiver.receive_frame(forged)), TamperedChunk)


def test_reordered_chunks_refused_and_resent(tmp_path: Path) -> None:
    pair = _pair(tmp_path)
    frames = pair.sender.frames()
    pair.receiver.receive_frame(frames[0])
    error = _refusal(pair.receiver.receive_frame(frames[2]))
    assert isinstance(error, OutOfOrderChunk) and "resume" in str(error)
    assert pair.receiver.position == (0, 1)
    _finish(pair)


def test_replayed_chunk_ignored_idempotently(tmp_path: Path) -> None:
    pair = _pair(tmp_path)
    frames = pair.sender.frames()
    for frame in frames[:3]:
        pair.receiver.receive_frame(frame)
    size_before = os.path.getsize(pair.receiver.store.part_path(0))
    error = _refusal(pair.receiver.receive_frame(frames[1]))
    assert isinstance(error, ReplayedChunk) and error.reason == "replay"
    assert os.path.getsize(pair.receiver.store.part_path(0)) == size_before
    assert pair.receiver.position == (0, 3)
    for frame in frames[3:]:
        pair.receiver.receive_frame(frame)
    deliver_control(pair.sender, pair.receiver)
    _finish(pair)
    # Replays after completion are still only replays.
    assert isinstance(_refusal(pair.receiver.receive_frame(frames[0])), ReplayedChunk)


def test_cross_file_and_cross_transfer_splicing_refused(tmp_path: Path) -> None:
    pair = _pair(tmp_path, sizes=(2 * CHUNK, 2 * CHUNK))
    frames = pair.sender.frames()
    second_file_first_chunk = bytearray(frames[2])
    struct.pack_into(">I", second_file_first_chunk, 22, 0)  # relabel as file 0
    assert isinstance(_refusal(pair.receiver.receive_frame(second_file_first_chunk)),
                      TamperedChunk)
    # The same bytes under a different transfer (same session secret, other manifest).
    other = Manifest(os.urandom(16), CHUNK, pair.manifest.files, pair.manifest.qkd_key_ids)
    other_keys = TransferKeys(other, pair.secrets.session, pair.secrets.qkd)
    foreign = ChunkSealer(other.transfer_id, 0, other_keys.file_key(0)).seal(
        0, (pair.sources[0]).read_bytes()[:CHUNK], last=False)
    error = _refusal(pair.receiver.receive_frame(foreign))
    assert isinstance(error, TamperedChunk) and "another transfer" in str(error)
    relabelled = bytearray(foreign)
    relabelled[6:22] = pair.manifest.transfer_id
    assert isinstance(_refusal(pair.receiver.receive_frame(relabelled)), TamperedChunk)
    assert pair.receiver.position == (0, 0)
    _finish(pair)


def test_wrong_keys_refuse_everything(tmp_path: Path) -> None:
    pair = _pair(tmp_path)
    wrong = TransferKeys(pair.manifest, pair.secrets.session, os.urandom(32))
    sender = TransferSender(wrong, lambda i, o, n: pair.sources[i].read_bytes()[o:o + n])
    sender.status = SenderStatus.SENDING
    frame = sender.next_frame()
    assert frame is not None
    assert isinstance(_refusal(pair.receiver.receive_frame(frame)), TamperedChunk)


def test_control_replay_and_reflection_ignored(tmp_path: Path) -> None:
    pair = _pair(tmp_path)
    frames = pair.sender.frames()
    pair.receiver.receive_frame(frames[0])
    acks = pair.receiver.data_to_send()
    pair.receiver.receive_frame(frames[1])
    acks += pair.receiver.data_to_send()
    assert len(acks) == 2
    for ack in acks:
        pair.sender.receive_control(ack)
    assert pair.sender.acknowledged == (0, 2)
    (ignored,) = pair.sender.receive_control(acks[0])  # replayed old ack
    assert isinstance(ignored, ControlIgnored) and "stale" in ignored.reason
    assert pair.sender.acknowledged == (0, 2)
    # A receiver->sender frame reflected back to the receiver is refused.
    error = _refusal(pair.receiver.receive_frame(acks[1]))
    assert isinstance(error, TamperedChunk) and "direction" in str(error)
    # A sender->receiver frame reflected to the sender is ignored.
    pair.sender.cancel("test")
    (cancel,) = pair.sender.data_to_send()
    assert isinstance(pair.sender.receive_control(cancel)[0], ControlIgnored)


def test_chunks_drained_together_get_one_cumulative_ack(tmp_path: Path) -> None:
    pair = _pair(tmp_path)
    frames = pair.sender.frames()
    for frame in frames[:3]:
        pair.receiver.receive_frame(frame)
    (ack,) = pair.receiver.data_to_send()
    pair.sender.receive_control(ack)
    assert pair.sender.acknowledged == (0, 3)
    assert pair.receiver.data_to_send() == []


def test_source_changed_behind_our_back_fails_its_hash_twice(tmp_path: Path) -> None:
    """Same size, time reset: only the SHA-256 notices. One retry, then a clear failure."""
    content = os.urandom(3 * CHUNK)
    manifest = Manifest(os.urandom(16), CHUNK,
                        (FileEntry("f", len(content), hashlib.sha256(content).digest()),),
                        ("k",))
    changed = bytearray(content)
    changed[5] ^= 1
    secrets = Secrets.fresh()
    sender = TransferSender(secrets.keys(manifest),
                            lambda i, o, n: bytes(changed[o:o + n]), window_chunks=4)
    receiver = TransferReceiver.accept(secrets.keys(manifest), tmp_path / "dl")
    events = pump(sender, receiver)
    failures = [e for e in events if isinstance(e, IntegrityFailed)]
    assert failures == [IntegrityFailed(0, retrying=True), IntegrityFailed(0, retrying=False)]
    assert receiver.status is ReceiverStatus.FAILED
    assert sender.status is SenderStatus.CANCELLED
    assert not (tmp_path / "dl" / "f").exists()
    assert not list((tmp_path / "dl").rglob("*.part"))


def test_chunks_after_cancel_are_refused(tmp_path: Path) -> None:
    pair = _pair(tmp_path)
    frames = pair.sender.frames()
    pair.receiver.receive_frame(frames[0])
    pair.receiver.cancel("changed my mind")
    assert isinstance(_refusal(pair.receiver.receive_frame(frames[1])), MalformedFrame)
    assert not list((tmp_path / "dl").rglob("*.part"))
