"""A quota refusal reaches the user saying whose quota it is (issue 14 item 3): real relay,
KME pair and CLI processes; the relay runs with a queue of 8 and a sender's share of 2."""

from __future__ import annotations

import pytest

from tests.e2e.stack import Stack

pytestmark = pytest.mark.slow


def test_a_full_share_is_named_to_the_sender_and_frees_when_read(stack: Stack) -> None:
    stack.restart_relay("--quota", "8", "--sender-share", "1/4")
    try:
        lines = [f"flood {i}" for i in range(4)]
        result = stack.cli("alice", "send", "bob", "-", stdin="\n".join(lines))
        assert result.returncode != 0, result.stdout
        refusals = [line for line in result.stderr.splitlines() if "share_exceeded" in line]
        assert refusals, result.stderr
        assert all("your share of bob's queue is full (2 messages" in line for line in refusals)
        assert "Traceback" not in result.stderr
        # bob reads what got in: exactly the share, from the start of the flood.
        received = stack.cli("bob", "recv", "--json", check=True)
        texts = [line for line in received.stdout.splitlines() if '"flood' in line]
        assert len(texts) == len(lines) - len(refusals) and len(texts) <= 2
    finally:
        stack.restart_relay()
