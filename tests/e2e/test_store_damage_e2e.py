"""A damaged conversation in a live profile costs that conversation only, and a restored backup
gets its messages back (issue 14, item 4): real relay, KME pair and three CLI users."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator

import pytest

from client.cli.errors import EXIT_DAMAGED
from tests.e2e.stack import PASSPHRASE, Stack, start_stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory, pq_backend: str) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("damage"), users=("alice", "bob", "carol"))
    try:
        yield stack
    finally:
        stack.stop()


def _flip_session_of(stack: Stack, handle: str, peer: str) -> None:
    """Flip one bit of ``handle``'s sealed session with ``peer``, where it lies in the file."""
    from client.store import Store

    path = stack.profile(handle) / "store.sqlite3"
    with Store.open(PASSPHRASE, path, create=False) as store:
        key = store._sealer.name(peer)  # the keyed row name: which row is that peer's
    db = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        (blob,) = db.execute("SELECT sealed FROM sessions WHERE peer = ?", (key,)).fetchone()
    finally:
        db.close()
    data = bytearray(path.read_bytes())
    at = data.find(blob[:64])
    assert at >= 0 and data.find(blob[:64], at + 1) < 0
    data[at + 40] ^= 0x04
    path.write_bytes(bytes(data))


def _received(stack: Stack, handle: str) -> tuple[list[tuple[str, str]], str, int]:
    result = stack.cli(handle, "recv", "--json", "--timeout", "20")
    shown = [(m["from"], m["text"]) for m in map(json.loads, result.stdout.splitlines())]
    return shown, result.stderr, result.returncode


def test_a_damaged_session_costs_its_conversation_and_a_restore_brings_it_back(
        trio: Stack) -> None:
    trio.cli("alice", "send", "bob", "alice 1", check=True)
    trio.cli("carol", "send", "bob", "carol 1", check=True)
    shown, _, status = _received(trio, "bob")
    assert status == 0 and sorted(shown) == [("alice", "alice 1"), ("carol", "carol 1")]
    backup = trio.root / "bob-backup.sqlite3"
    trio.cli("bob", "backup", str(backup), check=True)

    _flip_session_of(trio, "bob", "alice")
    trio.cli("alice", "send", "bob", "alice 2", check=True)
    trio.cli("carol", "send", "bob", "carol 2", check=True)
    shown, err, status = _received(trio, "bob")
    assert ("carol", "carol 2") in shown  # the other conversation goes on
    assert ("alice", "alice 2") not in shown
    assert "sessions row of alice is damaged" in err and "Traceback" not in err
    assert status == 0, err
    doctor = trio.cli("bob", "doctor", "--store")
    assert doctor.returncode == EXIT_DAMAGED and "damaged: sessions" in doctor.stdout

    # alice's message was left at the relay: the restored profile reads it
    trio.cli("bob", "restore", str(backup), "--force", check=True)
    shown, err, status = _received(trio, "bob")
    assert ("alice", "alice 2") in shown, err
    assert trio.cli("bob", "doctor", "--store").returncode == 0
