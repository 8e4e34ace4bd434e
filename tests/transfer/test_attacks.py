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
    ManifestError,
    OutOfOrderChunk,
    ReceiverStatus,
    ReplayedChunk,
    Rewound,
    SenderStatus,
    TamperedChunk,
    TransferKeys,
    TransferReceiver,
    TransferSender,
    decode_message,
    encode_offer,
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


def _one_file(content: bytes) -> tuple[Manifest, Secrets]:
    return Manifest(os.urandom(16), CHUNK, (FileEntry("f", len(content)),), ("k",)), Secrets.fresh()


def test_final_record_naming_another_sha256_fails_twice_and_lands_nothing(
        tmp_path: Path) -> None:
    """The receiver checks what it wrote against the sealed final record: one retry, then a
    clear failure, and no file (a sender whose hash is wrong, sealed with the right keys)."""
    content = os.urandom(3 * CHUNK)
    manifest, secrets = _one_file(content)
    keys = secrets.keys(manifest)
    receiver = TransferReceiver.accept(keys, tmp_path / "dl")
    receiver.data_to_send()
    sealer = ChunkSealer(manifest.transfer_id, 0, keys.file_key(0))

    def send_file() -> list:
        events = []
        for index in range(3):
            data = content[index * CHUNK:(index + 1) * CHUNK]
            if index == 2:
                data += hashlib.sha256(content + b"!").digest()  # not what was sent
            events += receiver.receive_frame(sealer.seal(index, data, last=index == 2))
        return events

    assert [e for e in send_file() if isinstance(e, IntegrityFailed)] == [
        IntegrityFailed(0, retrying=True)]
    assert receiver.position == (0, 0)  # asked the sender to start the file again
    assert [e for e in send_file() if isinstance(e, IntegrityFailed)] == [
        IntegrityFailed(0, retrying=False)]
    assert receiver.status is ReceiverStatus.FAILED
    assert not (tmp_path / "dl" / "f").exists()
    assert not list((tmp_path / "dl").rglob("*.part"))


def test_final_record_cut_off_or_missing_is_refused(tmp_path: Path) -> None:
    """A last chunk without its 32-byte SHA-256 does not match the manifest's length."""
    content = os.urandom(CHUNK // 2)
    manifest, secrets = _one_file(content)
    keys = secrets.keys(manifest)
    receiver = TransferReceiver.accept(keys, tmp_path / "dl")
    sealer = ChunkSealer(manifest.transfer_id, 0, keys.file_key(0))
    for bad in (content, content + hashlib.sha256(content).digest()[:31]):
        error = _refusal(receiver.receive_frame(sealer.seal(0, bad, last=True)))
        assert isinstance(error, TamperedChunk) and "length" in str(error)
    assert receiver.position == (0, 0)


def test_source_changed_between_a_restart_never_lands_a_mix(tmp_path: Path) -> None:
    """The sender restarts mid-file and the file changed meanwhile (same size, time reset:
    only a hash notices). The restored sender re-reads the prefix for its hash, so the final
    record does not match the old prefix the receiver holds: the file starts again and what
    lands is the file as it is now, never half old and half new."""
    content = os.urandom(4 * CHUNK)
    manifest, secrets = _one_file(content)
    source = bytearray(content)

    def reader(index: int, offset: int, length: int) -> bytes:
        return bytes(source[offset:offset + length])

    sender = TransferSender(secrets.keys(manifest), reader, window_chunks=2)
    receiver = TransferReceiver.accept(secrets.keys(manifest), tmp_path / "dl")
    deliver_control(sender, receiver)
    for frame in sender.frames():  # chunks 0 and 1
        receiver.receive_frame(frame)
    deliver_control(sender, receiver)
    assert sender.acknowledged == (0, 2)
    snapshot = sender.snapshot()
    source[5] ^= 1  # changed while the sender was down
    sender = TransferSender.restore(snapshot, secrets.keys(manifest), reader, window_chunks=2)
    events = pump(sender, receiver)
    assert [e for e in events if isinstance(e, IntegrityFailed)] == [
        IntegrityFailed(0, retrying=True)]
    assert receiver.status is ReceiverStatus.COMPLETE
    assert (tmp_path / "dl" / "f").read_bytes() == bytes(source)


def test_restored_sender_rehashes_the_skipped_prefix_once(tmp_path: Path) -> None:
    content = os.urandom(6 * CHUNK + 9)
    manifest, secrets = _one_file(content)
    reads: list[int] = []

    def reader(index: int, offset: int, length: int) -> bytes:
        reads.append(offset // CHUNK)
        return content[offset:offset + length]

    sender = TransferSender(secrets.keys(manifest), reader, window_chunks=3)
    receiver = TransferReceiver.accept(secrets.keys(manifest), tmp_path / "dl")
    deliver_control(sender, receiver)
    for frame in sender.frames():
        receiver.receive_frame(frame)
    deliver_control(sender, receiver)
    snapshot = sender.snapshot()
    assert reads == [0, 1, 2]  # sending starts at once: no pass over the file first
    reads.clear()
    sender = TransferSender.restore(snapshot, secrets.keys(manifest), reader, window_chunks=3)
    events = pump(sender, receiver)
    assert not [e for e in events if isinstance(e, IntegrityFailed)]
    assert (tmp_path / "dl" / "f").read_bytes() == content
    # The prefix is read once for the hash, just before chunk 3 (the resume point; the
    # reader may reuse one buffer, so the prefix comes first), then the rest.
    assert reads == [0, 1, 2, 3, 4, 5, 6]


def test_a_version_1_transfer_saved_before_an_update_still_completes(tmp_path: Path) -> None:
    """Offers of the old format are refused with "update qsecret"; a transfer of that format
    already in progress (its manifest in this side's own records) still resumes, checked
    against the SHA-256 its offer listed, with no final record."""
    content = os.urandom(2 * CHUNK + 3)
    legacy = Manifest(os.urandom(16), CHUNK,
                      (FileEntry("f", len(content), hashlib.sha256(content).digest()),), ("k",),
                      version=1)
    with pytest.raises(ManifestError, match="update qsecret"):
        decode_message(encode_offer(legacy))
    assert Manifest.decode(legacy.encode(), stored=True) == legacy
    secrets = Secrets.fresh()
    sender = TransferSender(secrets.keys(legacy), lambda i, o, n: content[o:o + n])
    receiver = TransferReceiver.accept(secrets.keys(legacy), tmp_path / "dl")
    receiver.close()
    (tid,) = TransferReceiver.pending(tmp_path / "dl")
    stored = TransferReceiver.stored_manifest(tmp_path / "dl", tid)
    receiver = TransferReceiver.resume(secrets.keys(stored), tmp_path / "dl")
    pump(sender, receiver)
    assert receiver.status is ReceiverStatus.COMPLETE
    assert (tmp_path / "dl" / "f").read_bytes() == content


def test_chunks_after_cancel_are_refused(tmp_path: Path) -> None:
    pair = _pair(tmp_path)
    frames = pair.sender.frames()
    pair.receiver.receive_frame(frames[0])
    pair.receiver.cancel("changed my mind")
    assert isinstance(_refusal(pair.receiver.receive_frame(frames[1])), MalformedFrame)
    assert not list((tmp_path / "dl").rglob("*.part"))
