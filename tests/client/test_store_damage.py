"""A damaged profile store tells its owner what happened and how to recover (issue 14, item 4).

Each kind of damage is made on a copy of a real profile (tests/client/store_damage_profile.py)
and met by real ``qsecret`` processes: the header's bytes flipped, the file truncated, one bit
flipped in a history, contact or identity blob, the KDF parameters or the passphrase check
value flipped. Each gives one line on standard error naming the file and the damage, its exit
status (3 for damage, 2 for a wrong passphrase), no traceback, and leaves the file's bytes as
they were. A damaged history or contact row costs that row only; ``qsecret doctor --store``
lists it; ``qsecret backup`` then ``qsecret restore`` brings a damaged profile back.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from client.cli.errors import EXIT_DAMAGED, EXIT_FAILED
from tests.client.store_damage_profile import PASSPHRASE, TEXTS, write_profile

ROOT = Path(__file__).resolve().parents[2]
STORE = "store.sqlite3"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_profile(tmp_path_factory.mktemp("pristine") / "alice").parent


@pytest.fixture
def profile(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of the profile directory for one test to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "alice"))


def qsecret(data: Path, *args: str,
            passphrase: str = PASSPHRASE) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("QSECRET_")}
    env["QSECRET_PASSPHRASE"] = passphrase
    return subprocess.run([sys.executable, "-m", "client", *args, "--data", str(data)],
                          capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sealed(path: Path, sql: str) -> bytes:
    db = sqlite3.connect(f"file:{path}?immutable=1", uri=True)  # leaves no -wal/-shm
    try:
        return bytes(db.execute(sql).fetchone()[0])
    finally:
        db.close()


def flip_bit_in(path: Path, sql: str, offset: int | None = None) -> None:
    """Flip one bit inside the value ``sql`` selects, where it lies in the file."""
    value = sealed(path, sql)
    needle = value[:64]  # within one page even when the value overflows to others
    data = bytearray(path.read_bytes())
    at = data.find(needle)
    assert at >= 0 and data.find(needle, at + 1) < 0, "the value is not in the file once"
    data[at + (len(needle) // 2 if offset is None else offset)] ^= 0x10
    path.write_bytes(bytes(data))


def flip_byte(offset: int, mask: int = 0xFF) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        data = bytearray(path.read_bytes())
        data[offset] ^= mask
        path.write_bytes(bytes(data))
    return damage


def truncate_by(count: int) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: max(0, len(data) - count)])
    return damage


def flip_identity(path: Path) -> None:
    flip_bit_in(path, "SELECT sealed FROM secrets WHERE name = 'identity'")


def flip_kdf(path: Path) -> None:
    flip_bit_in(path, "SELECT value FROM meta WHERE name = 'kdf'", offset=6)  # in the salt


def flip_check(path: Path) -> None:
    flip_bit_in(path, "SELECT value FROM meta WHERE name = 'check'")


def break_history_page(path: Path) -> None:
    """Damage SQLite's own structure (not a sealed blob): the history table's root page."""
    db = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'history'").fetchone()
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
    finally:
        db.close()
    flip_byte((root - 1) * page_size, 0xFF)(path)  # the page's type byte


FATAL = {
    "header signature": (flip_byte(3), "does not start with the SQLite signature"),
    "header page size": (flip_byte(16, 0x01), "SQLite header is damaged (page size"),
    "truncated by a page": (truncate_by(4096), "the file is truncated"),
    "truncated mid-page": (truncate_by(1000), "the file is truncated"),
    "truncated to nothing": (truncate_by(1 << 30), "the file is empty"),
    "history table page": (break_history_page, "the profile store is damaged: SQLite"),
    "identity blob bit": (flip_identity, "the sealed identity does not open"),
    "kdf parameters bit": (flip_kdf, "KDF parameters or passphrase check value are damaged"),
    "check value bit": (flip_check, "KDF parameters or passphrase check value are damaged"),
}


@pytest.mark.parametrize("kind", list(FATAL))
def test_fatal_damage_is_one_clear_line_exit_3_and_the_file_untouched(profile: Path,
                                                                       kind: str) -> None:
    damage, expected = FATAL[kind]
    store = profile / STORE
    damage(store)
    before = digest(store)
    for command in (["contacts", "list"], ["export", "bob"], ["recv", "--timeout", "1"]):
        result = qsecret(profile, *command)
        assert result.returncode == EXIT_DAMAGED, (command, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert str(store) in lines[0] and expected in lines[0]
        assert "qsecret restore" in lines[0]
        assert "wrong passphrase" not in lines[0]
        assert digest(store) == before, f"{command} wrote to the damaged file"
        assert [p.name for p in profile.iterdir()] == [STORE]  # nothing left beside it
    if kind in ("kdf parameters bit", "check value bit"):  # no passphrase changes the answer
        result = qsecret(profile, "contacts", "list", passphrase="another passphrase")
        assert result.returncode == EXIT_DAMAGED and expected in result.stderr
    assert digest(store) == before


def test_a_wrong_passphrase_is_not_damage(profile: Path) -> None:
    store = profile / STORE
    before = digest(store)
    result = qsecret(profile, "contacts", "list", passphrase="not the passphrase")
    assert result.returncode == EXIT_FAILED
    assert "wrong passphrase" in result.stderr and "damaged" not in result.stderr
    assert digest(store) == before


def test_a_damaged_history_row_is_skipped_with_a_count(profile: Path) -> None:
    store = profile / STORE
    flip_bit_in(store, "SELECT sealed FROM history WHERE id = 2")
    result = qsecret(profile, "export", "bob", "--json")
    assert result.returncode == 0, result.stderr
    shown = [m["text"] for m in json.loads(result.stdout)]
    assert shown == [TEXTS[0], TEXTS[2], TEXTS[3]]  # only the damaged row is missing
    assert "1 damaged history row(s) skipped (rows 2)" in result.stderr
    assert "Traceback" not in result.stderr
    listing = qsecret(profile, "contacts", "list", "--json")
    assert listing.returncode == 0 and json.loads(listing.stdout)[0]["handle"] == "bob"

    doctor = qsecret(profile, "doctor", "--store", "--json")
    assert doctor.returncode == EXIT_DAMAGED
    report = json.loads(doctor.stdout)
    assert [(d["table"], d["row"]) for d in report["damaged"]] == [("history", 2)]
    assert "does not open" in report["damaged"][0]["what"]


def test_a_damaged_contact_row_costs_that_contact_only(profile: Path) -> None:
    store = profile / STORE
    flip_bit_in(store, "SELECT sealed FROM contacts")
    listing = qsecret(profile, "contacts", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    assert json.loads(listing.stdout) == [{"handle": "bob", "verified": False, "unread": 2}]
    assert "1 damaged contacts row(s) skipped" in listing.stderr
    export = qsecret(profile, "export", "bob", "--json")
    assert [m["text"] for m in json.loads(export.stdout)] == list(TEXTS)
    # what needs the pinned identity says so, and never re-pins whatever comes next
    verify = qsecret(profile, "contacts", "verify", "bob")
    assert verify.returncode == EXIT_DAMAGED
    assert f"{store}: contacts row of bob is damaged" in verify.stderr
    doctor = qsecret(profile, "doctor", "--store")
    assert doctor.returncode == EXIT_DAMAGED
    assert "damaged: contacts  row 1: sealed contact does not open" in doctor.stdout


def test_doctor_store_on_a_sound_and_on_a_broken_profile(profile: Path) -> None:
    sound = qsecret(profile, "doctor", "--store")
    assert sound.returncode == 0, sound.stderr
    assert "no damaged rows" in sound.stdout and "8 sealed rows checked" in sound.stdout
    store = profile / STORE
    flip_identity(store)
    before = digest(store)
    broken = qsecret(profile, "doctor", "--store")
    assert broken.returncode == EXIT_DAMAGED
    assert "damaged: secrets   row identity" in broken.stdout
    assert "the profile cannot be used until it is restored" in broken.stdout
    flip_kdf(store)
    before = digest(store)
    fatal = qsecret(profile, "doctor", "--store")
    assert fatal.returncode == EXIT_DAMAGED and "checksum does not match" in fatal.stderr
    assert digest(store) == before


def test_backup_damage_restore(profile: Path, tmp_path: Path) -> None:
    backup = tmp_path / "backups" / "alice.sqlite3"
    made = qsecret(profile, "backup", str(backup))
    assert made.returncode == 0, made.stderr
    assert qsecret(profile, "backup", str(backup)).returncode == EXIT_FAILED  # no overwrite
    assert b"first from alice" not in backup.read_bytes()  # sealed, as the store is

    store = profile / STORE
    flip_identity(store)
    damaged = digest(store)
    assert qsecret(profile, "contacts", "list").returncode == EXIT_DAMAGED

    refused = qsecret(profile, "restore", str(backup))  # a store is there: needs --force
    assert refused.returncode == EXIT_FAILED and "--force" in refused.stderr
    wrong = qsecret(profile, "restore", str(backup), "--force", passphrase="not it")
    assert wrong.returncode == EXIT_FAILED and "wrong passphrase" in wrong.stderr
    assert digest(store) == damaged

    restored = qsecret(profile, "restore", str(backup), "--force")
    assert restored.returncode == 0, restored.stderr
    kept = [p for p in profile.iterdir() if p.name.startswith(f"{STORE}.replaced-")
            and not p.name.endswith(("-wal", "-shm"))]
    assert len(kept) == 1 and digest(kept[0]) == damaged  # nothing is deleted
    export = qsecret(profile, "export", "bob", "--json")
    assert export.returncode == 0, export.stderr
    assert [m["text"] for m in json.loads(export.stdout)] == list(TEXTS)

    # a damaged backup is refused before anything changes
    flip_check(backup)
    now = digest(store)
    bad = qsecret(profile, "restore", str(backup), "--force")
    assert bad.returncode == EXIT_DAMAGED and str(backup) in bad.stderr
    assert digest(store) == now


def test_restore_into_a_new_profile_directory(profile: Path, tmp_path: Path) -> None:
    backup = tmp_path / "alice.backup"
    assert qsecret(profile, "backup", str(backup)).returncode == 0
    fresh = tmp_path / "new-machine"
    assert qsecret(fresh, "restore", str(backup)).returncode == 0
    export = qsecret(fresh, "export", "bob", "--json")
    assert [m["text"] for m in json.loads(export.stdout)] == list(TEXTS)


# -- in process: stores from before the checksum, and parameters a flipped bit made absurd --

def test_a_store_from_before_the_checksum_gets_it_on_its_next_unlock(tmp_path: Path) -> None:
    from client.store import CorruptStore, Store, WrongPassphrase
    from tests.fixtures import make_store_fixtures as fx

    path = tmp_path / STORE
    shutil.copyfile(ROOT / "tests" / "fixtures" / "stores" / "profile.sqlite3", path)
    assert _meta(path, "unlock_tag") is None
    with pytest.raises(WrongPassphrase, match="or its passphrase check value is damaged"):
        Store.open("not the passphrase", path, create=False)
    Store.open(fx.PASSPHRASE, path, create=False).close()
    assert _meta(path, "unlock_tag") is not None
    flip_check(path)
    with pytest.raises(CorruptStore, match="checksum does not match"):
        Store.open(fx.PASSPHRASE, path, create=False)


def test_absurd_kdf_parameters_are_refused_before_argon2_runs(profile: Path) -> None:
    import cbor2

    from client.store import CorruptStore, Store

    path = profile / STORE
    db = sqlite3.connect(path)
    salt, ops, _ = cbor2.loads(_meta(path, "kdf"))
    with db:  # as an older store would hold them: no checksum to say they were damaged
        db.execute("UPDATE meta SET value = ? WHERE name = 'kdf'",
                   (cbor2.dumps([salt, ops, 1 << 40]),))
        db.execute("DELETE FROM meta WHERE name = 'unlock_tag'")
    db.close()
    with pytest.raises(CorruptStore, match="memlimit 1099511627776 is out of range"):
        Store.open(PASSPHRASE, path, create=False)


def _meta(path: Path, name: str) -> bytes | None:
    db = sqlite3.connect(f"file:{path}?immutable=1", uri=True)  # leaves no -wal/-shm
    try:
        row = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    finally:
        db.close()
    return None if row is None else bytes(row[0])


def test_a_truncated_store_with_frames_in_its_wal_is_refused_untouched(profile: Path) -> None:
    """With frames in the WAL the header's size is not judged (a checkpoint may be under way
    in another process); SQLite's own check refuses the truncated file instead."""
    from client.store import CorruptStore, Store

    path = profile / STORE
    truncate_by(8192)(path)
    (profile / f"{STORE}-wal").write_bytes(b"\x00" * 32)  # not a valid WAL: SQLite ignores it
    before = digest(path)
    with pytest.raises(CorruptStore, match="SQLite cannot read it"):
        Store.open(PASSPHRASE, path, create=False)
    assert digest(path) == before
