"""A group message that arrives while the sender's first pairwise message (the one that opens
the session and carries the group's log) still waits for its QKD keys is held, not lost.

Real relay, KME pair and ``qsecret`` processes. dave has never heard from alice; alice makes
a group with him and writes to it. dave's first ``recv`` reaches no KME, so alice's session
message is held for its keys; the group message behind it must be held too (before the fix
it was acknowledged and dropped as "a group you are not in", and never came back). His next
``recv``, with the KME back, shows the group and the message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.e2e.stack import Stack, free_port, start_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pq_backend: str) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("first"), users=("alice", "bob", "dave"))
    try:
        yield stack
    finally:
        stack.stop()


def test_a_group_message_behind_a_held_first_message_is_held_not_dropped(
        stack: Stack) -> None:
    stack.cli("alice", "contacts", "add", "dave", check=True)
    stack.cli("alice", "group", "create", "crew", "bob", "dave", check=True)
    stack.cli("alice", "send", "@crew", "hello crew", check=True)

    no_kme = f"https://127.0.0.1:{free_port()}"  # nobody listens: QKD keys cannot come
    first = stack.cli("dave", "recv", "--json", "--kme", no_kme, check=True)
    assert "hello crew" not in first.stdout
    assert "a group you are not in" not in first.stderr, first.stderr

    second = stack.cli("dave", "recv", "--json", check=True)
    events = [json.loads(line) for line in second.stdout.splitlines() if line.strip()]
    texts = [(e.get("group"), e.get("from"), e.get("text")) for e in events if "text" in e]
    assert ("crew", "alice", "hello crew") in texts, second.stdout + second.stderr
