"""Hostile names from a sender always land inside the downloads folder, visibly renamed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.transfer import FileEntry, Manifest, ReceiverStatus, UnsafeName, safe_components
from client.transfer.names import (
    MAX_COMPONENT_BYTES,
    OnConflict,
    is_inside,
    land_file,
    numbered,
)
from client.transfer.partial import plan_destinations

from .helpers import Secrets, pump

HOSTILE = [
    ("../../etc/passwd", ("etc", "passwd")),
    ("/etc/shadow", ("etc", "shadow")),
    ("..\\..\\Windows\\System32\\evil.dll", ("Windows", "System32", "evil.dll")),
    ("C:\\Users\\x\\a.txt", ("Users", "x", "a.txt")),
    ("C:a.txt", ("a.txt",)),
    ("a/./b/../c", ("a", "b", "c")),
    ("nul\x00byte.txt", ("nul_byte.txt",)),
    ("CON", ("_CON",)),
    ("con.txt", ("_con.txt",)),
    ("dir/COM1.log", ("dir", "_COM1.log")),
    ("LPT9", ("_LPT9",)),
    ("AUX .txt", ("_AUX .txt",)),
    ("trailing dots...", ("trailing dots",)),
    ("...", ("unnamed",)),
    ("..", ("unnamed",)),
    ("", ("unnamed",)),
    ("///", ("unnamed",)),
    ("a<b>c:d\"e|f?g*h", ("a_b_c_d_e_f_g_h",)),
    ("bell\x07.txt", ("bell_.txt",)),
    ("photo\u202egpj.exe", ("photo_gpj.exe",)),
    (".qsecret-partial/x", ("_.qsecret-partial", "x")),
    ("ok/normal name.txt", ("ok", "normal name.txt")),
]


@pytest.mark.parametrize(("name", "expected"), HOSTILE)
def test_safe_components_neutralise(name: str, expected: tuple[str, ...]) -> None:
    assert safe_components(name) == expected


def test_overlong_component_is_truncated_keeping_extension() -> None:
    (name,) = safe_components("é" * 300 + ".pdf")
    assert len(name.encode()) <= MAX_COMPONENT_BYTES
    assert name.endswith(".pdf")
    name.encode().decode()  # still valid UTF-8 (no split character)


def test_too_deep_is_refused_with_a_clear_error() -> None:
    with pytest.raises(UnsafeName, match="nested"):
        safe_components("/".join(["d"] * 100))


def test_numbered() -> None:
    assert numbered("report.pdf", 1) == "report (1).pdf"
    assert numbered("archive.tar.gz", 2) == "archive (2).tar.gz"
    assert numbered("README", 3) == "README (3)"
    assert numbered(".bashrc", 1) == ".bashrc (1)"


def test_plan_resolves_clashes_inside_one_offer() -> None:
    entries = [("a", 1), ("a/b", 1), ("X.txt", 1), ("x.txt", 1), ("d?", 1), ("d_", 1)]
    manifest = Manifest(
        transfer_id=bytes(16), chunk_size=4096,
        files=tuple(FileEntry(p, s) for p, s in entries))
    plan = plan_destinations(manifest)
    assert plan == [("a",), ("a_b",), ("X.txt",), ("x (1).txt",), ("d_",), ("d_ (1)",)]


def test_land_file_refuses_symlinked_folder_escape(tmp_path: Path) -> None:
    downloads = tmp_path / "dl"
    downloads.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (downloads / "link").symlink_to(outside)
    source = tmp_path / "part"
    source.write_bytes(b"data")
    with pytest.raises(UnsafeName, match="outside"):
        land_file(source, downloads, ("link", "x.txt"))
    assert not list(outside.iterdir())
    assert source.exists()  # nothing lost


def test_land_file_conflict_policies(tmp_path: Path) -> None:
    downloads = tmp_path / "dl"
    downloads.mkdir()
    (downloads / "f.txt").write_bytes(b"old")
    for content, policy, expect in [
        (b"new1", OnConflict.RENAME, "f (1).txt"),
        (b"new2", OnConflict.OVERWRITE, "f.txt"),
    ]:
        source = tmp_path / "part"
        source.write_bytes(content)
        landed = land_file(source, downloads, ("f.txt",), policy)
        assert landed == downloads / expect and landed.read_bytes() == content
    source = tmp_path / "part"
    source.write_bytes(b"new3")
    with pytest.raises(FileExistsError):
        land_file(source, downloads, ("f.txt",), OnConflict.FAIL)
    assert source.read_bytes() == b"new3"


def test_is_inside(tmp_path: Path) -> None:
    assert is_inside(tmp_path, tmp_path / "a" / "b")
    assert not is_inside(tmp_path / "a", tmp_path / "ab")
    assert not is_inside(tmp_path, tmp_path / ".." / "x")


def test_hostile_offer_lands_inside_downloads(tmp_path: Path) -> None:
    """A hand-made hostile manifest (a real sender's build_manifest never names these)."""
    from client.transfer import TransferKeys, TransferReceiver, TransferSender

    names = [name for name, _ in HOSTILE if name]  # an empty path is refused by Manifest
    contents = {name: f"content of {name!r}".encode() for name in names}
    files = tuple(FileEntry(n, len(c)) for n, c in contents.items())
    manifest = Manifest(transfer_id=os.urandom(16), chunk_size=4096, files=files,
                        qkd_key_ids=("k",))
    secrets = Secrets.fresh()
    ordered = [contents[f.path] for f in files]

    def reader(index: int, offset: int, length: int) -> bytes:
        return ordered[index][offset:offset + length]

    downloads = tmp_path / "inside" / "downloads"
    sender = TransferSender(TransferKeys(manifest, secrets.session, secrets.qkd), reader)
    receiver = TransferReceiver.accept(secrets.keys(manifest), downloads)
    pump(sender, receiver)
    assert receiver.status is ReceiverStatus.COMPLETE
    landed = receiver.landed()
    assert len(landed) == len(files)
    for index, path in landed.items():
        assert is_inside(downloads, path), path
        assert path.read_bytes() == ordered[index]
    # Nothing was written outside the downloads folder.
    everything = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert all(is_inside(downloads, p) for p in everything)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_safe_components_property(name: str) -> None:
    """Any text becomes plain components that stay under the root on POSIX and Windows."""
    try:
        parts = safe_components(name)
    except UnsafeName:
        return  # too deep / too long: refused with a message
    assert parts
    root = Path("/downloads")
    for part in parts:
        assert part not in ("", ".", "..")
        assert not set(part) & set('/\\\x00<>:"|?*')
        assert not any(ord(ch) < 32 for ch in part)
        assert len(part.encode()) <= MAX_COMPONENT_BYTES
        assert part == part.rstrip(". ")
    assert is_inside(root, root.joinpath(*parts))
