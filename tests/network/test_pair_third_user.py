"""A third user on the KME pair (issue 16: "Any KME serves any number of SAEs"): carol,
enrolled with ``qsecret kme pki issue-sae`` and using alice's KME, chats with alice (same
KME: keys from that KME's own store) and with bob (across the link), every message
``QKD+ML-KEM-768+X25519``. An SAE enrolled but never seen by either KME is refused with a
503 that says why, not bound to the wrong KME."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from keysource.kme.client import KmeUnavailable, SaeClient
from keysource.kme.pki import Pki
from tests.conftest import full_sources
from tests.e2e.stack import Stack

pytestmark = pytest.mark.slow

USERS = ("alice", "bob", "carol")  # alice and carol at kme-alice, bob at kme-bob


def _client(stack: Stack, port: int, sae: str) -> SaeClient:
    pki = Pki(stack.root / "kme" / "pki")
    paths = pki.sae(sae)
    return SaeClient(f"https://127.0.0.1:{port}", ca=pki.ca_cert, cert=paths.cert,
                     key=paths.key)


def test_three_users_on_the_pair_chat_with_qkd_keys(tmp_path: Path, pq_backend: str) -> None:
    stack = Stack(tmp_path, keys_before_use=100)
    try:
        stack.start_relay()
        stack.start_kme()
        enrolled = subprocess.run(
            [sys.executable, "-m", "client", "kme", "pki", "issue-sae", "sae-carol",
             "--dir", str(stack.root / "kme" / "pki")], capture_output=True, text=True)
        assert enrolled.returncode == 0, enrolled.stderr
        for user in USERS:
            stack.init(user)
            stack.cli(user, "recv", check=True)  # its prekeys on the relay
        # The issue's steps: carol adds alice and writes first; then every other pair.
        pairs = [("carol", "alice"), ("alice", "bob"), ("carol", "bob")]
        for sender, receiver in pairs:
            stack.cli(sender, "contacts", "add", receiver, check=True)
            stack.cli(sender, "send", receiver, "-", check=True,
                      stdin="\n".join(f"{sender}->{receiver} {i}" for i in range(3)))
        for user in USERS:
            stack.cli(user, "recv", check=True)
        for sender, receiver in pairs:  # and back, on the sessions the first messages made
            stack.cli(receiver, "send", sender, f"{receiver}->{sender} back", check=True)
        for user in USERS:
            stack.cli(user, "recv", check=True)
        full = full_sources(pq_backend)
        for sender, receiver in pairs:
            view = stack.history(receiver, sender)
            texts = [m["text"] for m in view]
            assert texts[:3] == [f"{sender}->{receiver} {i}" for i in range(3)], texts
            assert f"{receiver}->{sender} back" in texts
            back = stack.history(sender, receiver)
            assert all(m["keys"] in full for m in view + back), [
                m["keys"] for m in view + back]

        # Keys for carol and alice came from kme-alice's own store, not over the link.
        with _client(stack, stack.port_a, "sae-alice") as alice:
            status = alice.get_status("sae-carol")
            assert status.target_KME_ID == "kme-alice"
            keys = alice.get_enc_keys("sae-carol", number=1)
            assert keys[0].path == ("kme-alice",)
        with _client(stack, stack.port_a, "sae-carol") as carol:
            fetched = carol.get_dec_keys("sae-alice", [keys[0].key_ID])
            assert fetched[0].key == keys[0].key

        # An SAE enrolled but never seen by either KME: a clear refusal, no key bound.
        Pki(stack.root / "kme" / "pki").issue_sae("sae-erin")
        with _client(stack, stack.port_b, "sae-bob") as bob, \
                pytest.raises(KmeUnavailable, match="has not called either KME"):
            bob.get_enc_keys("sae-erin", number=1)
    finally:
        stack.stop()
