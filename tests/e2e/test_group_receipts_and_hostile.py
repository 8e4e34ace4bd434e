"""Group receipts and a hostile member, with real processes: relay, KME pair, ``qsecret``
commands, and a hostile member's own client (tests/e2e/hostile_member.py: the real messenger
of a real profile, driven to send what an honest client never does).

- Receipts: alice writes to a group; bob reads (``recv``), dave only receives (his ``send``
  takes the backlog in without showing it), carol is away. alice's history then says
  "2/3 delivered · 1/3 read" for each message; a receipt from a non-member and one for a
  message that never existed are refused and counted at alice; nobody but alice got one.
- Membership: mallory, a member but no admin, sends every other member a change forged in
  the admin's name (bad signature), a removal she has no right to make, and a replay of the
  admin's old (valid) addition of dave, who was removed since. Every member refuses all three
  with a clear reason, counts them, and keeps the roster it had.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.e2e.stack import PASSPHRASE, Stack
from tests.network.conftest import logged_in_on_two_nodes

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# Two QKD nodes joined by a link: every pair of users gets QKD keys, on one node or across.
AT = {"alice": "x", "carol": "x", "mallory": "x", "bob": "y", "dave": "y"}
NODES = {"x": ["sae-alice", "sae-carol", "sae-mallory"], "y": ["sae-bob", "sae-dave"]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pq_backend: str) -> Iterator[Stack]:
    """A relay, the two nodes and five profiles, each logged in once (prekeys published)."""
    with logged_in_on_two_nodes(tmp_path_factory.mktemp("greceipts"), AT, NODES) as stack:
        yield stack


def _each(stack: Stack, commands: dict[str, tuple[str, ...]]) -> dict[str, str]:
    with ThreadPoolExecutor(len(commands)) as pool:
        futures = {h: pool.submit(stack.cli, h, *args, check=True) for h, args in commands.items()}
        return {h: f.result().stdout for h, f in futures.items()}


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _recv_each(stack: Stack, handles: tuple[str, ...]) -> dict[str, list[dict[str, object]]]:
    return {h: _json_lines(out)
            for h, out in _each(stack, {h: ("recv", "--json") for h in handles}).items()}


def _group(stack: Stack, handle: str, name: str) -> dict[str, object]:
    result = stack.cli(handle, "group", "list", "--json", check=True)
    return {g["name"]: g for g in json.loads(result.stdout)}[name]


def _history(stack: Stack, handle: str, name: str) -> list[dict[str, object]]:
    return _json_lines(stack.cli(handle, "group", "history", name, "--json", check=True).stdout)


def _hostile(stack: Stack, handle: str, *args: str) -> dict[str, object]:
    """Run the hostile client of ``handle``'s profile (its own process)."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.e2e.hostile_member", "--data", str(stack.profile(handle)),
         "--relay", stack.relay_url, *args], capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "QSECRET_PASSPHRASE": PASSPHRASE}, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_group_receipts_count_per_message_at_the_sender_only(stack: Stack) -> None:
    stack.cli("alice", "group", "create", "crew", "bob", "carol", "dave", check=True)
    _recv_each(stack, ("bob", "carol", "dave"))
    stack.cli("alice", "send", "@crew", "-", stdin="m1\nm2\n", check=True)
    mine = _history(stack, "alice", "crew")
    assert [(m["text"], m["delivered"], m["read"], m["recipients"]) for m in mine] == [
        ("m1", 0, 0, 3), ("m2", 0, 0, 3)]
    # bob reads them; dave's send takes them in without showing them; carol is away.
    assert [m["text"] for m in _recv_each(stack, ("bob",))["bob"] if "text" in m] == ["m1", "m2"]
    stack.cli("dave", "send", "@crew", "dave here", check=True)
    # Receipts nobody honest sends: from mallory (no member of crew), and from bob for a
    # message that never existed.
    group_id = str(_group(stack, "alice", "crew")["id"])
    _hostile(stack, "mallory", "crew", "receipt", group_id, str(mine[0]["id"]), "--to", "alice")
    _hostile(stack, "bob", "crew", "receipt", group_id, "f" * 32, "--to", "alice")
    got = _recv_each(stack, ("alice",))["alice"]
    assert [m["text"] for m in got if "text" in m] == ["dave here"]
    events = [e for e in got if e.get("event") == "receipts"]
    assert events and all(e["group"] == "crew" and e["recipients"] == 3 for e in events)
    history = [m for m in _history(stack, "alice", "crew") if m["from"] == "alice"]
    assert [(m["text"], m["delivered"], m["read"], m["recipients"]) for m in history] == [
        ("m1", 2, 1, 3), ("m2", 2, 1, 3)], history
    text = stack.cli("alice", "group", "history", "crew", check=True).stdout
    assert "me: m1    ✓ 2/3 delivered · 1/3 read" in text, text
    refused = _group(stack, "alice", "crew")["refused"]
    assert refused == {"receipt from a non-member": 1, "receipt for an unknown message": 1}
    # Receipts went to alice only: carol, back, got none (she would refuse them as
    # receipts for messages she never sent); counts show on one's own messages only.
    carol = _recv_each(stack, ("carol",))["carol"]
    assert [m["text"] for m in carol if "text" in m] == ["m1", "m2", "dave here"]
    assert _group(stack, "carol", "crew")["refused"] == {}
    assert not [m for m in _history(stack, "bob", "crew") if "delivered" in m]


def test_forged_unauthorised_and_replayed_changes_are_refused_by_every_member(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    stack.cli("alice", "group", "create", "guard", "bob", "carol", "mallory", check=True)
    stack.cli("alice", "group", "add", "guard", "dave", check=True)
    stack.cli("alice", "group", "remove", "guard", "dave", check=True)
    _recv_each(stack, ("bob", "carol", "dave", "mallory"))
    others = ("alice", "bob", "carol")
    before = {h: _group(stack, h, "guard") for h in others}
    for view in before.values():
        assert view["members"] == ["alice", "bob", "carol", "mallory"]
        assert view["admins"] == ["alice"] and view["refused"] == {}
    to = ("--to", *others)
    _hostile(stack, "mallory", "guard", "forge", "alice", "carol", *to)
    _hostile(stack, "mallory", "guard", "unauthorised", "bob", *to)
    _hostile(stack, "mallory", "guard", "replay", "dave", *to)
    monkeypatch.setenv("QSECRET_LOG", "warning")  # the reasons, as the log says them
    results = {}
    with ThreadPoolExecutor(len(others)) as pool:
        futures = {h: pool.submit(stack.cli, h, "recv", "--json", check=True) for h in others}
        results = {h: f.result() for h, f in futures.items()}
    for handle in others:
        events = [e for e in _json_lines(results[handle].stdout) if e.get("event") == "group"]
        notes = [str(e["note"]) for e in events]
        assert all(e["refused"] for e in events) and len(notes) == 2, (handle, notes)
        assert any("from mallory" in n and "bad signature" in n for n in notes), notes
        assert any("from mallory" in n and "mallory is not an admin" in n for n in notes)
        assert "a replay or a resend of a change already applied" in results[handle].stderr
        after = _group(stack, handle, "guard")
        assert after["members"] == before[handle]["members"], (handle, after)
        assert after["admins"] == ["alice"]
        assert after["refused"] == {"forged": 1, "unauthorised": 1, "duplicate": 1}, after
        changes = json.loads(stack.cli(handle, "group", "list", "--json", "--changes",
                                       check=True).stdout)
        (guard,) = [g for g in changes if g["name"] == "guard"]
        assert [c["op"] for c in guard["changes"]] == ["create", "add", "remove"]
    # And the group still works for the roster it kept.
    stack.cli("mallory", "send", "@guard", "still here", check=True)
    got = _recv_each(stack, others)
    for handle in ("alice", "bob", "carol"):
        assert [m["text"] for m in got[handle] if "text" in m] == ["still here"], handle
