"""Building manifests from files and trees, and their canonical, validated encoding."""

from __future__ import annotations

import os
from pathlib import Path

import cbor2
import pytest

from client.transfer import (
    FileEntry,
    FileReader,
    Manifest,
    ManifestError,
    SourceError,
    build_manifest,
    decode_message,
    encode_cancel,
    encode_decline,
    encode_offer,
)
from client.transfer.manifest import DEFAULT_CHUNK_SIZE, chunk_size_for_payload
from client.transfer.stream import OVERHEAD_BYTES
from relay.wire.binary import MAX_BINARY_PAYLOAD


def _tree(root: Path) -> None:
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha")
    (root / "sub" / "b.bin").write_bytes(b"\x00" * 5000)
    (root / "sub" / "deep" / "c").write_bytes(b"")


def test_tree_keeps_relative_structure_and_sizes(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    _tree(root)
    built = build_manifest([root], chunk_size=4096)
    files = {f.path: f for f in built.manifest.files}
    assert sorted(files) == ["proj/a.txt", "proj/sub/b.bin", "proj/sub/deep/c"]
    assert files["proj/a.txt"].size == 5 and files["proj/a.txt"].sha256 is None
    assert files["proj/sub/b.bin"].size == 5000
    assert built.manifest.chunk_count(list(files).index("proj/sub/b.bin")) == 2
    assert files["proj/sub/deep/c"].chunk_count(4096) == 1  # empty file: one (last) chunk
    assert built.manifest.total_size == 5005
    assert len(built.sources) == 3 and len(built.stamps) == 3


def test_symlinks_and_special_files_in_a_tree(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    _tree(root)
    outside = tmp_path / "secret.txt"
    outside.write_bytes(b"not yours")
    (root / "escape").symlink_to(outside)
    (root / "escape_dir").symlink_to(tmp_path)
    (root / "inner_link").symlink_to(root / "a.txt")
    (root / "loop").symlink_to(root / "sub")
    (root / "broken").symlink_to(root / "nope")
    os.mkfifo(root / "pipe")
    built = build_manifest([root])
    names = [f.path for f in built.manifest.files]
    assert "proj/inner_link" in names  # stays inside the tree: sent as a regular file
    assert not any(n.endswith(("escape", "escape_dir", "loop", "broken", "pipe")) for n in names)
    reasons = {s.path: s.reason for s in built.skipped}
    assert "outside" in reasons["proj/escape"]
    assert "outside" in reasons["proj/escape_dir"]
    assert "not followed" in reasons["proj/loop"]
    assert "broken" in reasons["proj/broken"]
    assert "special" in reasons["proj/pipe"]


def test_explicit_paths_and_errors(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    (tmp_path / "x" / "same.txt").write_bytes(b"1")
    (tmp_path / "y" / "same.txt").write_bytes(b"2")
    built = build_manifest([tmp_path / "x" / "same.txt", tmp_path / "y" / "same.txt"])
    assert [f.path for f in built.manifest.files] == ["same.txt", "same (1).txt"]
    with pytest.raises(SourceError, match="no such file"):
        build_manifest([tmp_path / "missing"])
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(SourceError, match="not a regular file"):
        build_manifest([tmp_path / "fifo"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="nothing to send"):
        build_manifest([tmp_path / "empty"])


def test_encoding_is_canonical_and_round_trips(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"hello")
    manifest = build_manifest([tmp_path / "f"]).manifest.with_qkd_key_ids(["id-1", "id-2"])
    data = manifest.encode()
    assert Manifest.decode(data) == manifest
    assert Manifest.decode(data).encode() == data
    raw = cbor2.loads(data)
    assert raw["v"] == 2 and raw["suite"] == "AES-256-GCM/STREAM-v1"
    non_canonical = cbor2.dumps(raw, canonical=False)
    if non_canonical != data:  # key order differs from canonical
        with pytest.raises(ManifestError, match="canonical"):
            Manifest.decode(non_canonical)


def _raw(**changes: object) -> bytes:
    raw: dict[str, object] = {
        "v": 2, "id": bytes(16), "suite": "AES-256-GCM/STREAM-v1", "chunk": 65536,
        "qkd": [], "files": [["a", 1]],
    }
    raw.update(changes)
    return cbor2.dumps({k: v for k, v in raw.items() if v is not None}, canonical=True)


@pytest.mark.parametrize(("changes", "message"), [
    ({"v": 3}, "version 3 is not supported"),
    ({"v": 1, "files": [["a", 1, bytes(32)]]}, "older qsecret.*update qsecret"),
    ({"suite": "ROT13"}, "unknown cipher suite"),
    ({"id": bytes(15)}, "transfer ID"),
    ({"chunk": 100}, "chunk size"),
    ({"chunk": 1 << 30}, "chunk size"),
    ({"files": []}, "1..100000 files"),
    ({"files": [["a", -1]]}, "size"),
    ({"files": [["a", True]]}, "size"),
    ({"files": [["a", 1, bytes(32)]]}, r"\[path, size\]"),
    ({"files": [["a"]]}, r"\[path, size\]"),
    ({"files": [[7, 1]]}, "path"),
    ({"files": [["a", 1], ["a", 2]]}, "twice"),
    ({"files": [["a", 2**32 * 65536 + 1]]}, "too large"),
    ({"qkd": [""]}, "key_IDs"),
    ({"qkd": None}, "fields"),
    ({"extra": 1}, "fields"),
])
def test_decode_rejects_bad_manifests(changes: dict, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        Manifest.decode(_raw(**changes))


def test_decode_rejects_garbage() -> None:
    for data in (b"", b"\xff\xff", cbor2.dumps([1, 2]), cbor2.dumps("x")):
        with pytest.raises(ManifestError):
            Manifest.decode(data)


def test_e2ee_payloads_round_trip() -> None:
    manifest = Manifest(os.urandom(16), 4096, (FileEntry("a", 0),))
    offer = decode_message(encode_offer(manifest))
    assert offer.type == "transfer-offer" and offer.manifest == manifest
    decline = decode_message(encode_decline(manifest.transfer_id, "no thanks"))
    assert (decline.type, decline.transfer_id, decline.reason) == (
        "transfer-decline", manifest.transfer_id, "no thanks")
    cancel = decode_message(encode_cancel(manifest.transfer_id, "x" * 10_000))
    assert cancel.type == "transfer-cancel" and len(cancel.reason) == 500
    with pytest.raises(ManifestError):
        decode_message(cbor2.dumps({"t": "transfer-offer", "manifest": b"junk"}))
    with pytest.raises(ManifestError, match="unknown"):
        decode_message(cbor2.dumps({"t": "bogus"}))


def test_default_chunk_fits_relay_binary_frames() -> None:
    assert DEFAULT_CHUNK_SIZE + OVERHEAD_BYTES <= MAX_BINARY_PAYLOAD
    assert DEFAULT_CHUNK_SIZE % 4096 == 0
    assert chunk_size_for_payload((1 << 20) + 96) == 1 << 20


def test_file_reader_notices_a_changed_source(tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"a" * 10_000)
    built = build_manifest([source], chunk_size=4096)
    reader = FileReader.for_manifest(built)
    assert reader(0, 0, 4096) == b"a" * 4096
    with open(source, "r+b") as handle:
        handle.seek(5000)
        handle.write(b"b" * 5000)
    os.utime(source, ns=(1, 1))
    with pytest.raises(SourceError, match="changed since it was offered"):
        reader(0, 8192, 10_000 - 8192)
    reader.close()


def test_offer_summary_shows_sanitised_names() -> None:
    from client.transfer import count_files, format_size, summarise

    files = (FileEntry("../../etc/passwd", 10), FileEntry("CON", 2048))
    summary = summarise(Manifest(os.urandom(16), 4096, files))
    assert summary.top_names == ("etc", "_CON") and summary.renamed == 2
    assert summary.title == "etc and 1 more (2 files, 2.0 KiB)"
    single = summarise(Manifest(os.urandom(16), 4096, (FileEntry("a.txt", 5),)))
    assert single.title == "a.txt (1 file, 5 B)" and single.renamed == 0
    assert format_size(3 * 1024**3) == "3.0 GiB" and format_size(1023) == "1023 B"
    assert (count_files(1), count_files(0), count_files(3)) == ("1 file", "0 files", "3 files")
