"""Periodic fsync of partial files happens behind the writes, and its failure is not lost."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from client.transfer import TransferError, partial

from .helpers import deliver_control, make_pair, pump, sha256_file, write_seeded_file

CHUNK = 4096


def test_periodic_sync_runs_on_its_own_thread(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(partial, "FSYNC_EVERY_BYTES", 3 * CHUNK)
    source = tmp_path / "f.bin"
    write_seeded_file(source, 20 * CHUNK + 5, seed=7)
    pair = make_pair([source], tmp_path / "dl", chunk_size=CHUNK)
    deliver_control(pair.sender, pair.receiver)
    threads = []
    real = partial.PartialStore._sync_behind

    def spy(self: partial.PartialStore, fd: int) -> None:
        real(self, fd)
        threads.append(self._syncing)

    monkeypatch.setattr(partial.PartialStore, "_sync_behind", spy)
    pump(pair.sender, pair.receiver)
    assert len(threads) >= 5
    assert all(t is not None and t.name == "part-fsync" for t in threads)
    assert sha256_file(pair.receiver.landed()[0]) == sha256_file(pair.sources[0])


def test_a_failed_background_sync_stops_the_file_from_landing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk that cannot flush (EIO: not producible here, so injected) is reported."""
    monkeypatch.setattr(partial, "FSYNC_EVERY_BYTES", 3 * CHUNK)
    source = tmp_path / "f.bin"
    write_seeded_file(source, 8 * CHUNK, seed=8)
    pair = make_pair([source], tmp_path / "dl", chunk_size=CHUNK)
    deliver_control(pair.sender, pair.receiver)
    real_fsync = os.fsync
    failed = []

    def failing_fsync(fd: int) -> None:
        if not failed:
            failed.append(fd)
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(partial.os, "fsync", failing_fsync)
    with pytest.raises(TransferError, match="cannot write the partial file"):
        pump(pair.sender, pair.receiver)
    assert failed
    assert not pair.receiver.landed()
