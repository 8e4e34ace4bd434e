"""Per-file keys from mix(), bound to the manifest; progress rate and ETA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from client.transfer import FileEntry, Manifest, ProgressMeter, TransferError, TransferKeys
from keysource.mix import QkdPolicy, QkdRequired

from .helpers import deliver_control, make_pair, write_seeded_file


def _manifest(qkd_ids: tuple[str, ...] = ("k1",), size: int = 10) -> Manifest:
    files = (FileEntry("a", size), FileEntry("b", 0))
    return Manifest(bytes(range(16)), 4096, files, qkd_ids)


def test_keys_are_per_file_and_bound_to_manifest_and_inputs() -> None:
    session, qkd = os.urandom(32), os.urandom(32)
    keys = TransferKeys(_manifest(), session, qkd)
    again = TransferKeys(_manifest(), session, qkd)
    assert keys.file_key(0) == again.file_key(0)
    assert keys.file_key(0).key != keys.file_key(1).key
    assert keys.file_key(0).nonce_prefix != keys.file_key(1).nonce_prefix
    assert len(keys.file_key(0).key) == 32 and len(keys.file_key(0).nonce_prefix) == 7
    other_size = TransferKeys(_manifest(size=11), session, qkd)
    other_qkd = TransferKeys(_manifest(), session, os.urandom(32))
    other_session = TransferKeys(_manifest(), os.urandom(32), qkd)
    for other in (other_size, other_qkd, other_session):
        assert other.file_key(0).key != keys.file_key(0).key
    assert keys.control_key("s2r") != keys.control_key("r2s")
    assert keys.sources == ("QKD", "session") and not keys.degraded
    assert session.hex() not in repr(keys) and "secret" in repr(keys.file_key(0))
    with pytest.raises(TransferError, match="no file #2"):
        keys.file_key(2)


def test_qkd_policy() -> None:
    session = os.urandom(32)
    degraded = TransferKeys(_manifest(()), session, None)
    assert degraded.degraded and degraded.sources == ("session",)
    with pytest.raises(QkdRequired):
        TransferKeys(_manifest(()), session, None, policy=QkdPolicy.REQUIRE)
    with pytest.raises(TransferError, match="fetch them"):
        TransferKeys(_manifest(("k1",)), session, None)
    with pytest.raises(TransferError, match="names no QKD"):
        TransferKeys(_manifest(()), session, os.urandom(32))
    with pytest.raises(TransferError, match="at least 32"):
        TransferKeys(_manifest(), b"short", os.urandom(32))


def test_no_key_material_on_disk_or_in_snapshots(tmp_path: Path) -> None:
    source = tmp_path / "src" / "f.bin"
    write_seeded_file(source, 20_000, seed=9)
    pair = make_pair([source], tmp_path / "dl", chunk_size=4096)
    deliver_control(pair.sender, pair.receiver)
    for frame in pair.sender.frames()[:2]:
        pair.receiver.receive_frame(frame)
    keys = pair.receiver.keys
    secrets = [pair.secrets.session, pair.secrets.qkd, keys.file_key(0).key,
               keys.control_key("s2r"), keys.control_key("r2s")]
    pair.receiver.close()
    blobs = [p.read_bytes() for p in (tmp_path / "dl").rglob("*") if p.is_file()]
    blobs.append(repr(pair.sender.snapshot()).encode())
    for blob in blobs:
        for secret in secrets:
            assert secret not in blob and secret.hex().encode() not in blob


def test_progress_rate_and_eta_with_injected_clock() -> None:
    now = [0.0]
    meter = ProgressMeter(total_bytes=1000, files_total=2, clock=lambda: now[0],
                          window_seconds=5.0)
    first = meter.set_done(0)
    assert first.rate_bytes_per_s == 0 and first.eta_seconds is None
    for _ in range(4):
        now[0] += 1.0
        progress = meter.add(100)
    assert progress.rate_bytes_per_s == pytest.approx(100.0)
    assert progress.eta_seconds == pytest.approx(6.0)
    assert progress.fraction == pytest.approx(0.4)
    for _ in range(10):  # the window slides: the rate follows a slower link
        now[0] += 1.0
        progress = meter.add(50 if meter.done_bytes < 900 else 0)
    assert meter.snapshot().rate_bytes_per_s < 100
    back = meter.set_done(200, files_done=0)  # a resume moved backwards
    assert back.done_bytes == 200 and back.rate_bytes_per_s == 0
    done = meter.set_done(1000, files_done=2)
    assert done.eta_seconds == 0.0 and done.fraction == 1.0
